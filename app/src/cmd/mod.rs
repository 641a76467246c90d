//! CLI subcommands.

pub mod args;
pub mod bench;
pub mod doctor;
pub mod encode_prompt;
pub mod generate;
pub mod info;
pub mod make_model;
pub mod plan;
pub mod vae;
