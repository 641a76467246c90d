//! `tessera bench vae-parallel`: wall time and per-rank peak memory of the patch-parallel VAE decode
//! on N worker processes (both modes) for real-size Wan2.1/Wan2.2 VAEs with seeded random weights.
//!
//! Every rank runs with one CPU thread so that N = 1 and N = 2 use one and two cores: the speedup
//! column is the parallel efficiency of the decomposition, not of the thread pool. The memory column
//! is each rank's decode working set: the decode phase's heap peak above what was live when it began
//! (the loaded weights), i.e. activations, caches, exchanged strips and, on rank 0, the output.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use tessera_engine::api::tools::vae::Tiling;
use tessera_engine::api::tools::{Job, Supervisor, VaeDecodeSpec, WorldSpec};
use tessera_engine::api::{JobEvent, RankReport, VaeMode};

use super::support::{ensure_latents, ensure_vae_model, latent_channels};

#[derive(Args, Debug)]
pub struct BenchVaeParallelArgs {
    /// Where the make-model checkpoints and latents are kept between runs.
    #[arg(long, default_value = "target/bench-models")]
    pub models_dir: PathBuf,
    /// VAEs to run: `wan2.1-vae`, `wan2.2-vae`, `hv15-vae` (HunyuanVideo 1.5; 5 GB of f32 weights).
    #[arg(long, default_value = "wan2.1-vae,wan2.2-vae")]
    pub arch: String,
    /// Latent T,H,W per arch: `wan2.1-vae=1,32,32;wan2.2-vae=1,16,16;hv15-vae=1,16,16` (a 256×256
    /// frame by default).
    #[arg(long)]
    pub sizes: Option<String>,
    /// World sizes to run.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub ranks: Vec<usize>,
    /// Modes to run (`halo`, `tiles`).
    #[arg(long, default_value = "halo,tiles", value_delimiter = ',')]
    pub modes: Vec<VaeMode>,
    /// Tiling of the tiles-mode rows (sample pixels TH,TW,SH,SW).
    #[arg(long, default_value = "128,128,96,96", value_parser = Tiling::parse)]
    pub tiling: Tiling,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    arch: String,
    latent: [usize; 3],
    mode: String,
    ranks: usize,
    wall_seconds: f64,
    decode_seconds: f64,
    /// Decode-phase heap peak per rank.
    decode_peak_bytes: Vec<u64>,
    /// Halo mode: per rank, the seconds blocked on halo exchanges (summed over its pieces) and
    /// their share of its decode seconds (summed likewise).
    halo_wait_seconds: Vec<f64>,
    halo_wait_share: Vec<f64>,
    weights_bytes: u64,
}

fn size_for(sizes: &Option<String>, arch: &str) -> Result<[usize; 3]> {
    if let Some(s) = sizes {
        for part in s.split(';') {
            if let Some((a, v)) = part.split_once('=') {
                if a.trim() == arch {
                    let v: Vec<usize> = v.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>()?;
                    if let [t, h, w] = v[..] {
                        return Ok([t, h, w]);
                    }
                }
            }
        }
    }
    // One 256×256 frame: Wan2.1 compresses 8×, Wan2.2 and HunyuanVideo 1.5 16×.
    Ok(if arch == "wan2.1-vae" { [1, 32, 32] } else { [1, 16, 16] })
}

pub fn run(a: BenchVaeParallelArgs) -> Result<()> {
    std::fs::create_dir_all(&a.models_dir)?;
    let tiling = [
        a.tiling.tile_sample_min_height,
        a.tiling.tile_sample_min_width,
        a.tiling.tile_sample_stride_height,
        a.tiling.tile_sample_stride_width,
    ];
    let mut rows = Vec::new();
    println!("| VAE | latent T×H×W | mode | ranks | wall s | decode s | speedup | decode working set per rank GiB (rank 0 / max other) | vs N=1 (other ranks) | halo wait per rank (share of its decode) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for arch in a.arch.split(',').map(str::trim) {
        let model = ensure_vae_model(&a.models_dir, arch)?;
        let size = size_for(&a.sizes, arch)?;
        let latents = ensure_latents(&a.models_dir, latent_channels(&model.join("vae"))?, size)?;
        for &mode in &a.modes {
            let mut base: Option<(f64, u64)> = None;
            for &n in &a.ranks {
                let out = a.models_dir.join(format!("out-{arch}-{mode}-{n}.safetensors"));
                let spec = VaeDecodeSpec {
                    model: model.clone(),
                    config: None,
                    latents: latents.clone(),
                    out: out.clone(),
                    mode,
                    tiling: (mode == VaeMode::Tiles).then_some(tiling),
                    vae_parallel: None,
                };
                let mut sup =
                    Supervisor::spawn(WorldSpec { ranks: n, threads_per_rank: Some(1), ..WorldSpec::default() })
                        .context("starting the workers")?;
                let started = Instant::now();
                // Per rank: (halo wait seconds, decode seconds) summed over its pieces.
                let mut waits = vec![(0.0f64, 0.0f64); n];
                let result = sup.run_job(Job::VaeDecode(spec), |e| {
                    if let JobEvent::VaePiece { rank, piece } = e {
                        if let Some(w) = waits.get_mut(rank.0) {
                            w.0 += piece.halo_wait_seconds;
                            w.1 += piece.seconds;
                        }
                    }
                });
                let wall = started.elapsed().as_secs_f64();
                sup.shutdown();
                let result = result.with_context(|| format!("{arch} {mode} decode on {n} ranks"))?;
                let _ = std::fs::remove_file(&out);
                // The decode phase's own working set: its peak above what was live when it began
                // (the loaded weights, which candle keeps on the heap on CPU).
                let phase = |r: &RankReport, name: &str| {
                    r.phases
                        .iter()
                        .find(|p| p.name == name)
                        .map(|p| (p.seconds, p.peak_bytes.saturating_sub(p.start_bytes)))
                        .unwrap_or((0.0, 0))
                };
                let peaks: Vec<u64> = result.report.ranks.iter().map(|r| phase(r, "decode").1).collect();
                let decode_s = result.report.ranks.iter().map(|r| phase(r, "decode").0).fold(0.0, f64::max);
                let other = peaks.iter().skip(1).copied().max().unwrap_or(peaks[0]);
                let (b_s, b_peak) = *base.get_or_insert((decode_s, peaks[0]));
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                let shares: Vec<f64> = waits.iter().map(|(w, d)| if *d > 0.0 { w / d } else { 0.0 }).collect();
                let wait_cell = if mode == VaeMode::Halo && n > 1 {
                    waits
                        .iter()
                        .zip(&shares)
                        .map(|((w, _), s)| format!("{w:.2} s ({:.1} %)", 100.0 * s))
                        .collect::<Vec<_>>()
                        .join(" / ")
                } else {
                    "–".to_string()
                };
                println!(
                    "| {arch} | {}×{}×{} | {mode} | {n} | {wall:.1} | {decode_s:.1} | {:.2}× | {:.2} / {:.2} | {:.2}× | {wait_cell} |",
                    size[0],
                    size[1],
                    size[2],
                    b_s / decode_s.max(1e-9),
                    gib(peaks[0]),
                    gib(other),
                    other as f64 / b_peak.max(1) as f64,
                );
                rows.push(Row {
                    arch: arch.to_string(),
                    latent: size,
                    mode: mode.to_string(),
                    ranks: n,
                    wall_seconds: wall,
                    decode_seconds: decode_s,
                    decode_peak_bytes: peaks,
                    halo_wait_seconds: waits.iter().map(|w| w.0).collect(),
                    halo_wait_share: shares,
                    weights_bytes: result.report.ranks.first().map(|r| r.weights_bytes).unwrap_or(0),
                });
            }
        }
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
