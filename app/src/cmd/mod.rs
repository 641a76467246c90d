//! CLI subcommands.

pub mod args;
pub mod bench;
pub mod bench_comm;
pub mod bench_denoise;
pub mod bench_dit;
pub mod bench_vae_parallel;
pub mod doctor;
pub mod encode_prompt;
pub mod generate;
pub mod make_model;
pub mod plan;
pub mod vae;
