//! `tessera bench …`: measured runs of the engine's parts, one file per benchmark.
//!
//! - [`vae`]: VAE decode time and peak RSS, untiled and tiled, optionally beside diffusers.
//! - [`comm`]: bandwidth and latency of every collective across worker processes.
//! - [`dit`]: one DiT forward at a few token counts, optionally beside diffusers.
//! - [`vae_parallel`]: patch-parallel VAE decode on 1, 2, 4 worker processes.
//! - [`denoise`]: the sharded denoise on worker processes, per-rank memory and comm share.
//! - [`interleave`]: engines alternating in fresh processes, load gate, statistics, f32 peak.
//! - [`support`]: what several benchmarks share (seeded models and latents, child cases, `VmHWM`).

pub mod comm;
pub mod denoise;
pub mod dit;
pub mod interleave;
pub mod support;
pub mod vae;
pub mod vae_parallel;

use anyhow::Result;
use clap::Subcommand;

/// `generate` reports the same `VmHWM` figure as the benchmarks.
pub use support::peak_rss_bytes;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Decode benchmark table for the Wan2.1 and Wan2.2 VAEs.
    Vae(vae::BenchVaeArgs),
    /// Bandwidth and latency of every collective across N worker processes.
    Comm(comm::BenchCommArgs),
    /// One measured decode (used by `bench vae`; prints one JSON line).
    #[command(hide = true)]
    VaeCase(vae::VaeCaseArgs),
    /// DiT forward benchmark at a few token counts (real width, few blocks), optionally beside diffusers.
    Dit(dit::BenchDitArgs),
    /// Patch-parallel VAE decode (halo and tiles) on 1, 2, 4 worker processes: wall time, per-rank peak.
    VaeParallel(vae_parallel::BenchVaeParallelArgs),
    /// Sharded denoise on worker processes: resident weights, peak, step time, comm share per rank.
    Denoise(denoise::BenchDenoiseArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Vae(a) => vae::run(a),
        BenchCommand::Dit(a) => dit::run(a),
        BenchCommand::VaeParallel(a) => vae_parallel::run(a),
        BenchCommand::Denoise(a) => denoise::run(a),
        BenchCommand::Comm(a) => comm::run(a),
        BenchCommand::VaeCase(a) => {
            let r = vae::vae_case(&a)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
