//! `tessera`: the Tessera command line; without a subcommand it opens the studio. The code lives in
//! the `tessera_app` library (`lib.rs`), so tests can reach it.
//!
//! This binary never links CUDA: GPU work runs in `tessera-worker` processes.

use tessera_app::{cmd, report, studio};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tessera", version, about = "Wan video diffusion across all the GPUs of one workstation")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode latents to video or encode video to latents with a Wan VAE.
    #[command(subcommand)]
    Vae(cmd::vae::VaeCommand),
    /// Write a diffusers folder with a real architecture's config and seeded random weights.
    MakeModel(cmd::make_model::MakeModelArgs),
    /// Generate a video (text-to-video, or image-to-video with --image).
    Generate(Box<cmd::generate::GenerateArgs>),
    /// Encode a prompt to UMT5 embeddings (`prompt_embeds` [1, N, d_model]).
    EncodePrompt(cmd::encode_prompt::Args),
    /// List devices: CPU cores and RAM; GPUs, driver, NCCL and peer access when present.
    Doctor(cmd::doctor::DoctorArgs),
    /// Predict peak memory per rank and phase; whether it fits the GPUs, and the cheapest plan that does.
    Plan(Box<cmd::plan::PlanArgs>),
    /// Print the generation settings stored in a Tessera MP4 or PNG, and the command that reruns them.
    Info(cmd::info::InfoArgs),
    /// Benchmarks (time and peak memory tables).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        None => studio::run(),
        Some(Command::Vae(c)) => cmd::vae::run(c),
        Some(Command::MakeModel(a)) => cmd::make_model::run(a),
        Some(Command::Bench(c)) => cmd::bench::run(c),
        Some(Command::Doctor(a)) => cmd::doctor::run(a),
        Some(Command::Generate(a)) => cmd::generate::run(*a),
        Some(Command::EncodePrompt(a)) => cmd::encode_prompt::run(a),
        Some(Command::Plan(a)) => cmd::plan::run(*a),
        Some(Command::Info(a)) => cmd::info::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks argument ids, conflicts and requirements only when a command is parsed in a
    /// debug build; check every subcommand here so a clash fails a unit test, not a user's run.
    #[test]
    fn every_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
