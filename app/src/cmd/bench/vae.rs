//! `tessera bench vae`: time and peak memory of real-size Wan VAE decodes (seeded random weights of
//! the real architectures), untiled and tiled, optionally beside diffusers on the same machine.
//!
//! Every case runs in a fresh child process (`tessera bench vae-case`) so its peak RSS (`VmHWM`) is
//! its own; the diffusers script measures itself the same way. With `--diffusers` the two engines
//! alternate run by run and the load is watched ([`super::interleave`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_engine::api::tools::vae::{self, Tiling, VaeParts};
use tessera_engine::api::tools::{load_config, read_tensor};

use super::interleave::{run_row, table_row, Contender, F32Peak, InterleaveArgs, RowMeasure, TABLE_HEADER};
use super::support::{ensure_latents, ensure_vae_model, peak_rss_bytes};

#[derive(Args, Debug)]
pub struct BenchVaeArgs {
    /// Where the make-model checkpoints and latents are kept between runs.
    #[arg(long, default_value = "target/bench-models")]
    pub models_dir: PathBuf,
    /// Which VAEs: wan2.1-vae, wan2.2-vae (comma separated).
    #[arg(long, default_value = "wan2.1-vae,wan2.2-vae")]
    pub arch: String,
    /// Latent sizes T,H,W separated by `;`, each optionally `ARCH=T,H,W` for one VAE only
    /// (default: a small and a medium size per arch).
    #[arg(long)]
    pub sizes: Option<String>,
    /// Tiling used for the tiled rows (sample pixels TH,TW,SH,SW).
    #[arg(long, default_value = "128,128,96,96", value_parser = Tiling::parse)]
    pub tiling: Tiling,
    /// Untiled rows, tiled rows, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub tiled: TiledRows,
    /// Python interpreter with torch + diffusers: runs diffusers beside Tessera on the same weights
    /// and latents, interleaved (scripts/bench_vae_diffusers.py).
    #[arg(long)]
    pub diffusers: Option<PathBuf>,
    #[command(flatten)]
    pub interleave: InterleaveArgs,
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
    /// Model FLOPs of the decode (convolutions and attention, counted as it runs).
    #[serde(default)]
    pub flops: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    arch: String,
    latent: [usize; 3],
    video: [usize; 3],
    tiled: bool,
    /// Model FLOPs of the decode (Tessera's count; the same work for both engines).
    flops: Option<f64>,
    measure: RowMeasure,
}

/// One measured decode in this process (the hidden `bench vae-case`).
pub fn vae_case(a: &VaeCaseArgs) -> Result<CaseResult> {
    let latents = read_tensor(&a.latents, "latents", DType::F32, &Device::Cpu)?;
    let model = vae::load(&a.model, VaeParts::Decoder, DType::F32, &Device::Cpu)?;
    let flops_before = vae::model_flops();
    let started = std::time::Instant::now();
    let video = model.decode(&latents, a.tiling.as_ref(), &mut |_| {})?;
    let seconds = started.elapsed().as_secs_f64();
    let flops = (vae::model_flops() - flops_before) as f64;
    drop(video);
    Ok(CaseResult { seconds, peak_rss_bytes: peak_rss_bytes()?, flops: Some(flops) })
}

fn default_sizes(arch: &str) -> Vec<[usize; 3]> {
    match arch {
        "wan2.1-vae" => vec![[1, 16, 16], [2, 32, 32], [2, 32, 48]],
        _ => vec![[1, 8, 8], [2, 16, 16], [2, 16, 24]],
    }
}

/// `T,H,W` items separated by `;`, each optionally prefixed `ARCH=` to apply to that VAE only.
fn parse_sizes(s: &str) -> Result<Vec<(Option<String>, [usize; 3])>> {
    s.split(';')
        .map(|item| {
            let (arch, dims) = match item.split_once('=') {
                Some((a, d)) => (Some(a.trim().to_string()), d),
                None => (None, item),
            };
            let v: Vec<usize> = dims.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>()?;
            match v[..] {
                [t, h, w] if t > 0 && h > 0 && w > 0 => Ok((arch, [t, h, w])),
                _ => bail!("size `{item}` must be [ARCH=]T,H,W (latent frames, rows, columns; all > 0)"),
            }
        })
        .collect()
}

/// Which of untiled and tiled decodes a row set has.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TiledRows {
    No,
    Yes,
    Both,
}

pub fn run(a: BenchVaeArgs) -> Result<()> {
    std::fs::create_dir_all(&a.models_dir)?;
    let exe = std::env::current_exe()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_vae_diffusers.py");
    let threads = a.interleave.threads();
    let peak = F32Peak::detect(threads)?;
    let gate = a.interleave.gate();
    println!(
        "VAE decode, f32 CPU, {threads} threads per engine, {} timed runs each after {} warm-up (fresh process each, engines interleaved)",
        a.interleave.runs, a.interleave.warmup_runs
    );
    println!("f32 peak: {}", peak.describe());
    println!();
    println!("{TABLE_HEADER}");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for arch in a.arch.split(',').map(str::trim) {
        let model = ensure_vae_model(&a.models_dir, arch)?;
        let cfg: vae::Config = load_config(&model.join("vae"))?;
        let sizes: Vec<[usize; 3]> = match &a.sizes {
            Some(s) => parse_sizes(s)?
                .into_iter()
                .filter(|(only, _)| only.as_deref().is_none_or(|o| o == arch))
                .map(|(_, size)| size)
                .collect(),
            None => default_sizes(arch),
        };
        for size in sizes {
            let latents = ensure_latents(&a.models_dir, cfg.z_dim, size)?;
            let video = [1 + 4 * (size[0] - 1), size[1] * cfg.scale_factor_spatial, size[2] * cfg.scale_factor_spatial];
            for tiled in [false, true] {
                match (a.tiled, tiled) {
                    (TiledRows::No, true) | (TiledRows::Yes, false) => continue,
                    _ => {}
                }
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
                let ours = || {
                    let mut c = Command::new(&exe);
                    c.args(["bench", "vae-case", "--model"]).arg(&model).arg("--latents").arg(&latents);
                    if tiled {
                        c.args(["--tiling", &tiling]);
                    }
                    a.interleave.apply_threads(&mut c);
                    c
                };
                let mut contenders = vec![Contender { name: "tessera".into(), command: Box::new(ours) }];
                if let Some(py) = &a.diffusers {
                    // `move` copies these references into the closure (`py` itself is a local).
                    let (script, model, latents, tiling, interleave) =
                        (&script, &model, &latents, &tiling, &a.interleave);
                    let theirs = move || {
                        let mut c = Command::new(py);
                        c.arg(script).arg("--model").arg(model.join("vae")).arg("--latents").arg(latents);
                        c.args(["--threads", &threads.to_string()]);
                        if tiled {
                            c.args(["--tiling", tiling]);
                        }
                        interleave.apply_threads(&mut c);
                        c
                    };
                    contenders.push(Contender { name: "diffusers".into(), command: Box::new(theirs) });
                }
                let case = format!(
                    "{} {}×{}×{} → {}×{}×{}{}",
                    if arch == "wan2.1-vae" { "Wan2.1" } else { "Wan2.2" },
                    size[0],
                    size[1],
                    size[2],
                    video[0],
                    video[1],
                    video[2],
                    if tiled { ", tiled" } else { "" }
                );
                eprintln!("{case}:");
                let m = run_row(&contenders, a.interleave.warmup_runs, a.interleave.runs, &gate)?;
                let flops = m.engine("tessera").and_then(|e| e.flops());
                println!("{}", table_row(&case, &m, flops, &peak));
                notes.push(format!(
                    "- {case}: {}{}",
                    m.load_note(),
                    if m.is_comparison() {
                        String::new()
                    } else {
                        format!("; NOT A COMPARISON: {}", m.refused.join("; "))
                    }
                ));
                rows.push(Row { arch: arch.to_string(), latent: size, video, tiled, flops, measure: m });
            }
        }
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    if let Some(path) = &a.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&serde_json::json!({ "peak": peak, "gate": gate, "rows": rows }))?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_an_optional_arch() -> Result<()> {
        let got = parse_sizes("wan2.1-vae=2,32,32; 1,8,8")?;
        assert_eq!(got, vec![(Some("wan2.1-vae".to_string()), [2, 32, 32]), (None, [1, 8, 8])]);
        assert!(parse_sizes("2,32").is_err());
        assert!(parse_sizes("0,8,8").is_err());
        Ok(())
    }
}
