//! `tessera bench vae`: time and peak memory of real-size Wan VAE decodes (seeded random weights of
//! the real architectures), untiled and tiled, optionally beside diffusers on the same machine.
//!
//! Every case runs in a fresh child process (`tessera bench vae-case`) so its peak RSS (`VmHWM`) is
//! its own; the diffusers script measures itself the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_engine::api::tools::vae::{self, Tiling, VaeParts};
use tessera_engine::api::tools::{load_config, read_tensor};

use super::support::{ensure_latents, ensure_vae_model, peak_rss_bytes, run_child};

#[derive(Args, Debug)]
pub struct BenchVaeArgs {
    /// Where the make-model checkpoints and latents are kept between runs.
    #[arg(long, default_value = "target/bench-models")]
    pub models_dir: PathBuf,
    /// Which VAEs: wan2.1-vae, wan2.2-vae (comma separated).
    #[arg(long, default_value = "wan2.1-vae,wan2.2-vae")]
    pub arch: String,
    /// Latent sizes T,H,W separated by `;` (default: a small and a medium size per arch).
    #[arg(long)]
    pub sizes: Option<String>,
    /// Tiling used for the tiled rows (sample pixels TH,TW,SH,SW).
    #[arg(long, default_value = "128,128,96,96", value_parser = Tiling::parse)]
    pub tiling: Tiling,
    /// Python interpreter with torch + diffusers: adds diffusers rows (scripts/bench_vae_diffusers.py).
    #[arg(long)]
    pub diffusers: Option<PathBuf>,
    /// Also write the rows as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VaeCaseArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub latents: PathBuf,
    #[arg(long, value_parser = Tiling::parse)]
    pub tiling: Option<Tiling>,
}

/// One measured run, as printed by a case process (ours or the diffusers script).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub seconds: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    arch: String,
    latent: [usize; 3],
    video: [usize; 3],
    tiled: bool,
    engine: String,
    seconds: f64,
    peak_rss_gib: f64,
}

/// One measured decode in this process (the hidden `bench vae-case`).
pub fn vae_case(a: &VaeCaseArgs) -> Result<CaseResult> {
    let latents = read_tensor(&a.latents, "latents", DType::F32, &Device::Cpu)?;
    let model = vae::load(&a.model, VaeParts::Decoder, DType::F32, &Device::Cpu)?;
    let started = std::time::Instant::now();
    let video = model.decode(&latents, a.tiling.as_ref(), &mut |_| {})?;
    let seconds = started.elapsed().as_secs_f64();
    drop(video);
    Ok(CaseResult { seconds, peak_rss_bytes: peak_rss_bytes()? })
}

fn default_sizes(arch: &str) -> Vec<[usize; 3]> {
    match arch {
        "wan2.1-vae" => vec![[1, 16, 16], [2, 32, 32], [2, 32, 48]],
        _ => vec![[1, 8, 8], [2, 16, 16], [2, 16, 24]],
    }
}

fn parse_sizes(s: &str) -> Result<Vec<[usize; 3]>> {
    s.split(';')
        .map(|item| {
            let v: Vec<usize> = item.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>()?;
            match v[..] {
                [t, h, w] => Ok([t, h, w]),
                _ => bail!("size `{item}` must be T,H,W"),
            }
        })
        .collect()
}

pub fn run(a: BenchVaeArgs) -> Result<()> {
    std::fs::create_dir_all(&a.models_dir)?;
    let exe = std::env::current_exe()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_vae_diffusers.py");
    let mut rows = Vec::new();
    println!("| VAE | latent T×H×W | video F×H×W | tiled | engine | seconds | peak RSS GiB |");
    println!("|---|---|---|---|---|---|---|");
    for arch in a.arch.split(',').map(str::trim) {
        let model = ensure_vae_model(&a.models_dir, arch)?;
        let cfg: vae::Config = load_config(&model.join("vae"))?;
        let sizes = match &a.sizes {
            Some(s) => parse_sizes(s)?,
            None => default_sizes(arch),
        };
        for size in sizes {
            let latents = ensure_latents(&a.models_dir, cfg.z_dim, size)?;
            let video = [1 + 4 * (size[0] - 1), size[1] * cfg.scale_factor_spatial, size[2] * cfg.scale_factor_spatial];
            for tiled in [false, true] {
                let tiling = format!(
                    "{},{},{},{}",
                    a.tiling.tile_sample_min_height,
                    a.tiling.tile_sample_min_width,
                    a.tiling.tile_sample_stride_height,
                    a.tiling.tile_sample_stride_width
                );
                if tiled && !vae::TilePlan::decode_needs_tiling(&a.tiling, size[1], size[2], cfg.scale_factor_spatial) {
                    continue;
                }
                let mut ours = Command::new(&exe);
                ours.args(["bench", "vae-case", "--model"]).arg(&model).arg("--latents").arg(&latents);
                if tiled {
                    ours.args(["--tiling", &tiling]);
                }
                let mut runs = vec![("tessera".to_string(), run_child::<CaseResult>(ours)?)];
                if let Some(py) = &a.diffusers {
                    let mut theirs = Command::new(py);
                    theirs.arg(&script).arg("--model").arg(model.join("vae")).arg("--latents").arg(&latents);
                    if tiled {
                        theirs.args(["--tiling", &tiling]);
                    }
                    runs.push(("diffusers".to_string(), run_child(theirs)?));
                }
                for (engine, r) in runs {
                    let row = Row {
                        arch: arch.to_string(),
                        latent: size,
                        video,
                        tiled,
                        engine,
                        seconds: r.seconds,
                        peak_rss_gib: r.peak_rss_bytes as f64 / (1u64 << 30) as f64,
                    };
                    println!(
                        "| {} | {}×{}×{} | {}×{}×{} | {} | {} | {:.2} | {:.2} |",
                        row.arch,
                        size[0],
                        size[1],
                        size[2],
                        video[0],
                        video[1],
                        video[2],
                        if tiled { "yes" } else { "no" },
                        row.engine,
                        row.seconds,
                        row.peak_rss_gib
                    );
                    rows.push(row);
                }
            }
        }
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
