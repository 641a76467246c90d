//! CLI subcommands.

pub mod bench;
pub mod make_model;
pub mod vae;
