//! CLI subcommands.

pub mod bench;
pub mod doctor;
pub mod encode_prompt;
pub mod generate;
pub mod generate_workers;
pub mod make_model;
pub mod plan;
pub mod vae;
