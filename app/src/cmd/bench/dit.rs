//! `tessera bench dit`: wall time and peak memory of one `WanTransformer3DModel` forward at a few
//! token counts, on a real-width config with few blocks (`make-model` weights), optionally beside
//! diffusers on the same weights and inputs (`scripts/bench_dit_diffusers.py`).
//!
//! Every case runs in a fresh child process (`tessera bench dit --case-model ...`) so its peak RSS
//! (`VmHWM`) is its own; the diffusers script measures itself the same way. Both also save their
//! output, and the table shows how far apart they are: a benchmark of two different computations
//! would be meaningless.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_engine::api::random_models::{standard_normal, write_transformer, StoreDtype, DIFFUSERS_SHARD_BYTES};
use tessera_engine::api::tools::transformer::{self, WanTransformer3DModel};
use tessera_engine::api::tools::{read_all, read_tensor, take_tensor};
use tessera_engine::api::write_tensors;

use super::interleave::{run_row, table_row, Contender, F32Peak, InterleaveArgs, RowMeasure, TABLE_HEADER};
use super::support::peak_rss_bytes;

#[derive(Args, Debug)]
pub struct BenchDitArgs {
    /// Where the make-model transformers and inputs are kept between runs.
    #[arg(long, default_value = "target/bench-models")]
    pub models_dir: PathBuf,
    /// Transformer architecture (real widths): wan2.2-ti2v-5b, wan2.2-t2v-a14b, wan2.2-i2v-a14b, ...
    #[arg(long, default_value = "wan2.2-ti2v-5b")]
    pub arch: String,
    /// Transformer blocks (the real models have 30 or 40; time scales linearly with blocks).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Latent sizes F,H,W separated by `;` (tokens = F·H·W / 4 with the 1×2×2 patch).
    #[arg(long, default_value = "1,32,32;2,32,64;4,64,64")]
    pub sizes: String,
    /// Text tokens of the cross-attention (the pipelines always pass 512).
    #[arg(long, default_value_t = 512)]
    pub text_len: usize,
    /// Untimed forwards before the timed ones, in every case process.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed forwards per case.
    #[arg(long, default_value_t = 1)]
    pub iters: usize,
    /// Python interpreter with torch + diffusers: runs diffusers beside Tessera on the same weights
    /// and inputs, interleaved.
    #[arg(long)]
    pub diffusers: Option<PathBuf>,
    #[command(flatten)]
    pub interleave: InterleaveArgs,
    /// Also write the rows as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// (internal) run one measured case on this transformer folder and print one JSON line.
    #[arg(long, hide = true, requires = "case_inputs")]
    pub case_model: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub case_inputs: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub case_out: Option<PathBuf>,
}

/// One measured case, as printed by a case process (ours or the diffusers script).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DitCaseResult {
    /// Mean seconds per timed forward.
    pub seconds: f64,
    pub min_seconds: f64,
    pub load_seconds: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    arch: String,
    layers: usize,
    tokens: usize,
    latent: [usize; 3],
    text_len: usize,
    flops: f64,
    rel_err_vs_diffusers: Option<f64>,
    measure: RowMeasure,
}

pub fn run(a: BenchDitArgs) -> Result<()> {
    if let Some(model) = &a.case_model {
        let inputs = a.case_inputs.as_deref().context("--case-model needs --case-inputs")?;
        let r = dit_case(model, inputs, a.case_out.as_deref(), a.warmup, a.iters)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    bench_dit(a)
}

fn dit_case(model: &Path, inputs: &Path, out: Option<&Path>, warmup: usize, iters: usize) -> Result<DitCaseResult> {
    let dev = Device::Cpu;
    let mut all = read_all(inputs, &dev)?;
    let latents = take_tensor(&mut all, inputs, "latents")?;
    let context = take_tensor(&mut all, inputs, "context")?;
    let timestep = take_tensor(&mut all, inputs, "timestep")?;
    let t0 = std::time::Instant::now();
    let dit = WanTransformer3DModel::load(model, DType::F32, &dev)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    for _ in 0..warmup {
        drop(dit.forward(&latents, &timestep, &context)?);
    }
    let mut times = vec![];
    let mut last = None;
    for _ in 0..iters.max(1) {
        let t0 = std::time::Instant::now();
        let y = dit.forward(&latents, &timestep, &context)?;
        times.push(t0.elapsed().as_secs_f64());
        last = Some(y);
    }
    if let (Some(path), Some(y)) = (out, last) {
        write_tensors(path, &[("out", y)])?;
    }
    Ok(DitCaseResult {
        seconds: times.iter().sum::<f64>() / times.len() as f64,
        min_seconds: times.iter().copied().fold(f64::INFINITY, f64::min),
        load_seconds,
        peak_rss_bytes: peak_rss_bytes()?,
    })
}

fn parse_sizes(s: &str) -> Result<Vec<[usize; 3]>> {
    s.split(';')
        .map(|item| {
            let v: Vec<usize> = item.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>()?;
            match v[..] {
                [f, h, w] if f > 0 && h > 0 && w > 0 => Ok([f, h, w]),
                _ => bail!("size `{item}` must be F,H,W (latent frames, rows, columns; all > 0)"),
            }
        })
        .collect()
}

/// `make-model`-style random transformer (seed 0) with the real widths of `arch` and `layers` blocks.
fn ensure_model(dir: &Path, arch: &str, layers: usize) -> Result<(PathBuf, transformer::Config)> {
    let cfg = transformer::transformer_config_for_arch(arch, Some(layers))?;
    let root = dir.join(format!("{arch}-{layers}layers-seed0/transformer"));
    if !root.join("config.json").is_file() {
        eprintln!("writing {arch} ({layers} blocks) with seeded random weights to {}", root.display());
        write_transformer(&root, &cfg, 0, StoreDtype::F32, DIFFUSERS_SHARD_BYTES)?;
    }
    Ok((root, cfg))
}

fn ensure_inputs(dir: &Path, cfg: &transformer::Config, size: [usize; 3], text_len: usize) -> Result<PathBuf> {
    let [f, h, w] = size;
    let c = cfg.in_channels;
    let path = dir.join(format!("dit-inputs-c{c}-{f}x{h}x{w}-text{text_len}x{}.safetensors", cfg.text_dim));
    if !path.is_file() {
        let dev = Device::Cpu;
        let latents = Tensor::from_vec(standard_normal(1, c * f * h * w), (1, c, f, h, w), &dev)?;
        // UMT5 rows are O(0.1); the scale only matters for realism, not for timing.
        let context =
            (Tensor::from_vec(standard_normal(2, text_len * cfg.text_dim), (1, text_len, cfg.text_dim), &dev)? * 0.1)?;
        let timestep = Tensor::new(&[500f32], &dev)?;
        write_tensors(&path, &[("latents", latents), ("context", context), ("timestep", timestep)])?;
    }
    Ok(path)
}

/// ‖a−b‖/‖b‖ of the `out` tensors of two files.
fn rel_err(ours: &Path, theirs: &Path) -> Result<f64> {
    let read = |p: &Path| -> Result<Vec<f64>> {
        let t = read_tensor(p, "out", DType::F64, &Device::Cpu)?;
        Ok(t.flatten_all()?.to_vec1::<f64>()?)
    };
    let (a, b) = (read(ours)?, read(theirs)?);
    if a.len() != b.len() {
        bail!("outputs differ in size: {} vs {}", a.len(), b.len());
    }
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    Ok((num / den.max(1e-30)).sqrt())
}

/// Model FLOPs of one forward: 2 × multiply-adds of every matmul (patch and text embeddings, each
/// block's projections, attention products and FFN, the output head). Norms, RoPE, softmax and the
/// timestep MLP are left out (under 1 % at these sizes).
pub fn forward_flops(cfg: &transformer::Config, tokens: usize, text_len: usize) -> f64 {
    let (l, lt, d, f) = (tokens as f64, text_len as f64, cfg.inner_dim() as f64, cfg.ffn_dim as f64);
    let p = cfg.patch_size.iter().product::<usize>() as f64;
    let c_out = cfg.out_channels.unwrap_or(cfg.in_channels) as f64;
    let patch = l * cfg.in_channels as f64 * p * d;
    let text = lt * (cfg.text_dim as f64 * d + d * d);
    let block = 4.0 * l * d * d // self-attention q, k, v, out
        + 2.0 * l * l * d // q·kᵀ and p·v
        + 2.0 * l * d * d + 2.0 * lt * d * d // cross-attention q, out; k, v on the text
        + 2.0 * l * lt * d // cross-attention products
        + 2.0 * l * d * f; // FFN
    let head = l * d * c_out * p;
    2.0 * (patch + text + cfg.num_layers as f64 * block + head)
}

fn bench_dit(a: BenchDitArgs) -> Result<()> {
    std::fs::create_dir_all(&a.models_dir)?;
    let sizes = parse_sizes(&a.sizes)?;
    let (model, cfg) = ensure_model(&a.models_dir, &a.arch, a.layers)?;
    let exe = std::env::current_exe()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_dit_diffusers.py");
    let [pt, ph, pw] = cfg.patch_size;
    let threads = a.interleave.threads();
    let peak = F32Peak::detect(threads)?;
    let gate = a.interleave.gate();
    println!(
        "{} at real width (D {}, FFN {}), {} blocks, text {} tokens, f32 CPU, {threads} threads per engine; per process {} \
         warm-up + {} timed forward(s), {} timed process(es) per engine after {} warm-up process(es), engines interleaved",
        a.arch,
        cfg.inner_dim(),
        cfg.ffn_dim,
        a.layers,
        a.text_len,
        a.warmup,
        a.iters,
        a.interleave.runs,
        a.interleave.warmup_runs,
    );
    println!("f32 peak: {}", peak.describe());
    println!();
    println!("{TABLE_HEADER}");
    let tmp = tempfile_dir(&a.models_dir)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for size in sizes {
        let [f, h, w] = size;
        if f % pt != 0 || h % ph != 0 || w % pw != 0 {
            bail!("latent size {f},{h},{w} is not a multiple of the patch {pt}×{ph}×{pw}");
        }
        let tokens = (f / pt) * (h / ph) * (w / pw);
        let inputs = ensure_inputs(&a.models_dir, &cfg, size, a.text_len)?;
        let ours_out = tmp.join("ours.safetensors");
        let theirs_out = tmp.join("diffusers.safetensors");
        let ours = || {
            let mut c = Command::new(&exe);
            c.args(["bench", "dit", "--case-model"])
                .arg(&model)
                .arg("--case-inputs")
                .arg(&inputs)
                .arg("--case-out")
                .arg(&ours_out)
                .args(["--warmup", &a.warmup.to_string(), "--iters", &a.iters.to_string()]);
            a.interleave.apply_threads(&mut c);
            c
        };
        let mut contenders = vec![Contender { name: "tessera".into(), command: Box::new(ours) }];
        if let Some(py) = &a.diffusers {
            // `move` copies these references into the closure (`py` itself is a local).
            let (script, model, inputs, out, a) = (&script, &model, &inputs, &theirs_out, &a);
            let theirs = move || {
                let mut c = Command::new(py);
                c.arg(script)
                    .arg("--model")
                    .arg(model)
                    .arg("--inputs")
                    .arg(inputs)
                    .arg("--out")
                    .arg(out)
                    .args(["--warmup", &a.warmup.to_string(), "--iters", &a.iters.to_string()])
                    .args(["--threads", &threads.to_string()]);
                a.interleave.apply_threads(&mut c);
                c
            };
            contenders.push(Contender { name: "diffusers".into(), command: Box::new(theirs) });
        }
        let case = format!("{tokens} tokens ({f}×{h}×{w} latent)");
        eprintln!("{case}:");
        let m = run_row(&contenders, a.interleave.warmup_runs, a.interleave.runs, &gate)?;
        let err = if a.diffusers.is_some() { Some(rel_err(&ours_out, &theirs_out)?) } else { None };
        let flops = forward_flops(&cfg, tokens, a.text_len);
        println!("{}", table_row(&case, &m, Some(flops), &peak));
        notes.push(format!(
            "- {case}: {:.1} GFLOP per forward; outputs differ by {} (relative); {}{}",
            flops / 1e9,
            err.map(|e| format!("{e:.1e}")).unwrap_or_else(|| "–".into()),
            m.load_note(),
            if m.is_comparison() { String::new() } else { format!("; NOT A COMPARISON: {}", m.refused.join("; ")) }
        ));
        rows.push(Row {
            arch: a.arch.clone(),
            layers: a.layers,
            tokens,
            latent: size,
            text_len: a.text_len,
            flops,
            rel_err_vs_diffusers: err,
            measure: m,
        });
    }
    std::fs::remove_dir_all(&tmp).ok();
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

/// A scratch folder for the case outputs (removed at the end).
fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("dit-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
