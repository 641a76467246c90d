//! CLI subcommands.

pub mod bench;
pub mod encode_prompt;
pub mod generate;
pub mod make_model;
pub mod vae;
