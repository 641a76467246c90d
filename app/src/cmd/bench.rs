//! `tessera bench vae`: time and peak memory of real-size Wan VAE decodes (seeded random weights of
//! the real architectures), untiled and tiled, optionally beside diffusers on the same machine.
//!
//! Every case runs in a fresh child process (`tessera bench vae-case`) so its peak RSS (`VmHWM`) is
//! its own; the diffusers script measures itself the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tessera_engine::models::wan::vae::{self, Tiling, VaeParts};
use tessera_engine::random_weights::{self, StoreDtype};
use tessera_engine::tensor_io;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Decode benchmark table for the Wan2.1 and Wan2.2 VAEs.
    Vae(BenchVaeArgs),
    /// Bandwidth and latency of every collective across N worker processes.
    Comm(super::bench_comm::BenchCommArgs),
    /// One measured decode (used by `bench vae`; prints one JSON line).
    #[command(hide = true)]
    VaeCase(VaeCaseArgs),
    /// DiT forward benchmark at a few token counts (real width, few blocks), optionally beside diffusers.
    Dit(super::bench_dit::BenchDitArgs),
    /// Patch-parallel VAE decode (halo and tiles) on 1, 2, 4 worker processes: wall time, per-rank peak.
    VaeParallel(super::bench_vae_parallel::BenchVaeParallelArgs),
    /// Sharded denoise on worker processes: resident weights, peak, step time, comm share per rank.
    Denoise(super::bench_denoise::BenchDenoiseArgs),
}

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

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Vae(a) => bench_vae(a),
        BenchCommand::Dit(a) => super::bench_dit::run(a),
        BenchCommand::VaeParallel(a) => super::bench_vae_parallel::run(a),
        BenchCommand::Denoise(a) => super::bench_denoise::run(a),
        BenchCommand::Comm(a) => super::bench_comm::run(a),
        BenchCommand::VaeCase(a) => {
            let r = vae_case(&a)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

fn vae_case(a: &VaeCaseArgs) -> Result<CaseResult> {
    let latents = tensor_io::read_tensor(&a.latents, "latents", DType::F32, &Device::Cpu)?;
    let model = vae::load(&a.model, VaeParts::Decoder, DType::F32, &Device::Cpu)?;
    let started = std::time::Instant::now();
    let video = model.decode(&latents, a.tiling.as_ref(), &mut |_| {})?;
    let seconds = started.elapsed().as_secs_f64();
    drop(video);
    Ok(CaseResult { seconds, peak_rss_bytes: peak_rss_bytes()? })
}

/// `VmHWM` of this process.
pub fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    let kb: u64 = line.split_whitespace().nth(1).context("bad VmHWM line")?.parse()?;
    Ok(kb * 1024)
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

pub(crate) fn ensure_model(dir: &Path, arch: &str) -> Result<PathBuf> {
    let root = dir.join(format!("{arch}-seed0"));
    if !root.join("vae/config.json").is_file() {
        let cfg = match arch {
            "wan2.1-vae" => vae::Config::wan21(),
            "wan2.2-vae" => vae::Config::wan22(),
            other => bail!("unknown arch `{other}` (wan2.1-vae, wan2.2-vae)"),
        };
        eprintln!("writing {arch} with seeded random weights to {}", root.display());
        random_weights::write_vae(&root.join("vae"), &cfg, 0, StoreDtype::F32)?;
    }
    Ok(root)
}

pub(crate) fn ensure_latents(dir: &Path, z: usize, size: [usize; 3]) -> Result<PathBuf> {
    let [t, h, w] = size;
    let path = dir.join(format!("latents-z{z}-{t}x{h}x{w}.safetensors"));
    if !path.is_file() {
        // Unit-variance latents, like a denoised sample in normalised space.
        let values = random_weights::standard_normal(1, z * t * h * w);
        let lat = Tensor::from_vec(values, (1, z, t, h, w), &Device::Cpu)?;
        tensor_io::write_atomic(&path, &[("latents", lat)])?;
    }
    Ok(path)
}

fn run_child(mut cmd: Command) -> Result<CaseResult> {
    let out = cmd.output().context("running a benchmark case")?;
    if !out.status.success() {
        bail!("benchmark case failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("case printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}

fn bench_vae(a: BenchVaeArgs) -> Result<()> {
    std::fs::create_dir_all(&a.models_dir)?;
    let exe = std::env::current_exe()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_vae_diffusers.py");
    let mut rows = Vec::new();
    println!("| VAE | latent T×H×W | video F×H×W | tiled | engine | seconds | peak RSS GiB |");
    println!("|---|---|---|---|---|---|---|");
    for arch in a.arch.split(',').map(str::trim) {
        let model = ensure_model(&a.models_dir, arch)?;
        let cfg: vae::Config = tessera_engine::weights::load_config(&model.join("vae"))?;
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
                let mut runs = vec![("tessera".to_string(), run_child(ours)?)];
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
