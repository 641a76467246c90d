//! `tessera plan`: predicted peak memory per rank and phase for a generation, whether it fits the
//! GPUs, and when it does not, the cheapest plan that does (engine `planner`). Takes every
//! `generate` flag (one declaration, `super::args`); reads only the model folder's config files.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tessera_engine::api::planning::{
    self, GpuSpec, Options, PhasePrediction, Prediction, RankPrediction, Request, Target,
};
use tessera_engine::api::{render, Audience, DeviceKind, ModelSpec, ParallelPlan};

use super::args::GenerationArgs;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Every `generate` flag (only the model's config files are read; prompts, seeds and output
    /// paths are accepted and do not change the prediction).
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// GPUs to fit, COUNTxSIZE (8x24GB); implies --device cuda.
    #[arg(long, value_parser = GpuSpec::parse)]
    pub gpus: Option<GpuSpec>,
    /// CPU threads per rank (VAE kernel scratch, matmul slabs); default: this machine's cores / ranks,
    /// as the workers get them.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print JSON (`ranks[]` with `rank`, `peak_bytes`, `phases` like the run report).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Suggestion {
    plan: ParallelPlan,
    flags: Vec<String>,
    ranks: Vec<RankPrediction>,
}

#[derive(Serialize)]
struct Output<'a> {
    model: String,
    request: Request,
    plan: ParallelPlan,
    device: Target,
    gpus: Option<GpuSpec>,
    usable_bytes_per_gpu: Option<u64>,
    fits: Option<bool>,
    ranks: &'a [RankPrediction],
    host_text_encoder_bytes: u64,
    suggestion: Option<Suggestion>,
}

pub fn run(a: PlanArgs) -> Result<()> {
    let g = &a.generation;
    let applied = g.applied()?;
    let need = |v: Option<usize>, flag: &str| v.with_context(|| format!("{flag} is required (or a --preset with it)"));
    let req = Request {
        height: need(applied.height, "--height")?,
        width: need(applied.width, "--width")?,
        frames: need(applied.frames, "--frames")?,
        guidance: applied.guidance.unwrap_or(5.0),
        image: g.image.is_some(),
    };
    // GPUs (from --gpus or the preset) imply CUDA unless the command line says --device cpu: then
    // the prediction is for CPU workers and a preset's GPUs are not checked.
    let gpus = match (g.device, a.gpus) {
        (Some(DeviceKind::Cpu), Some(_)) => {
            bail!("--gpus describes GPUs to fit, --device cpu plans CPU workers: drop one of them")
        }
        (Some(DeviceKind::Cpu), None) => None,
        (_, explicit) => explicit.or(applied.gpus),
    };
    let target = match (g.device, gpus) {
        (Some(DeviceKind::Cuda), _) | (None, Some(_)) => Target::Cuda,
        (Some(DeviceKind::Cpu), _) | (None, None) => Target::Cpu,
    };
    let spec =
        ModelSpec::open(&g.model(), &g.files()).map_err(|e| anyhow::anyhow!(render(&e.to_string(), Audience::Cli)))?;
    for line in &spec.assumed {
        eprintln!("assumed: {line}");
    }
    let mut opts = Options::new(target);
    let plan = applied.plan;
    opts.threads = a.threads.unwrap_or(opts.threads / plan.ranks.max(1)).max(1);
    opts.keep_weights = applied.keep_weights;
    let prediction = planning::predict(&spec, &req, &plan, &opts)?;
    let fits = gpus.map(|g| planning::fits(&prediction, &g));
    let suggestion = match (gpus, fits) {
        (Some(g), Some(false)) => planning::cheapest_fit(&spec, &req, &plan, &opts, &g)?.map(|f| Suggestion {
            flags: planning::describe_changes(&plan, &f.plan),
            plan: f.plan,
            ranks: f.prediction.ranks,
        }),
        _ => None,
    };
    if a.json {
        let out = Output {
            model: g.model().display().to_string(),
            request: req,
            plan,
            device: target,
            gpus,
            usable_bytes_per_gpu: gpus.map(|g| g.usable()),
            fits,
            ranks: &prediction.ranks,
            host_text_encoder_bytes: prediction.host_text_encoder_bytes,
            suggestion,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_table(&spec, &req, &plan, target, gpus, &prediction);
    match (gpus, fits) {
        (Some(g), Some(true)) => {
            print_terms(&prediction.ranks);
            println!("fits {g} (≤ {} usable per GPU)", gib(g.usable()));
        }
        (Some(g), Some(false)) => match suggestion {
            Some(s) => {
                let peak = s.ranks.iter().map(|r| r.peak_bytes).max().unwrap_or(0);
                println!("does NOT fit {g}; cheapest plan that fits (peak {} per rank):", gib(peak));
                println!("  {}", s.flags.join(" "));
                println!();
                let p = Prediction { ranks: s.ranks, host_text_encoder_bytes: prediction.host_text_encoder_bytes };
                print_table(&spec, &req, &s.plan, target, gpus, &p);
                print_terms(&p.ranks);
            }
            None => println!(
                "does NOT fit {g}, and no plan on up to {} GPUs does: use smaller sizes or fewer frames, or more/larger GPUs",
                g.count
            ),
        },
        _ => {}
    }
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn print_table(
    spec: &ModelSpec,
    req: &Request,
    plan: &ParallelPlan,
    target: Target,
    gpus: Option<GpuSpec>,
    p: &Prediction,
) {
    let (lt, lh, lw) = spec.latent_grid(req.height, req.width, req.frames);
    println!(
        "{}×{}×{} frames ({} latents {lt}×{lh}×{lw}), CFG {}, {} on {target}",
        req.width,
        req.height,
        req.frames,
        if req.image { "i2v," } else { "t2v," },
        if req.guidance > 1.0 { "on" } else { "off" },
        spec.index.class_name
    );
    let tiling = plan.vae_tiling.map(|t| format!(" {:?}", t.as_array())).unwrap_or_default();
    println!(
        "plan: ranks {} · ulysses {} · cfg-parallel {} · fsdp {} · vae {}×{}{tiling} · text encoder {} · residency {}",
        plan.ranks,
        plan.ulysses,
        plan.cfg_parallel,
        plan.fsdp,
        plan.vae_parallel,
        plan.vae_mode,
        plan.text_encoder,
        plan.residency
    );
    // Columns by phase name: some phases are only some ranks' (`encode_image` is rank 0's).
    let mut names: Vec<&str> = Vec::new();
    for ph in p.ranks.iter().flat_map(|r| &r.phases) {
        if !names.contains(&ph.name.as_str()) {
            names.push(&ph.name);
        }
    }
    let mut header = format!("{:<5}", "rank");
    for n in &names {
        header += &format!("{n:>14}");
    }
    header += &format!("{:>14}  dominated by", "peak");
    println!("{header}");
    for r in &p.ranks {
        let mut line = format!("{:<5}", r.rank);
        for n in &names {
            let cell = r.phases.iter().find(|ph| ph.name == *n).map_or("—".to_string(), |ph| gib(ph.peak_bytes));
            line += &format!("{cell:>14}");
        }
        let fit = match gpus {
            Some(g) if r.peak_bytes > g.usable() => " ✗",
            Some(_) => " ✓",
            None => "",
        };
        line += &format!("{:>12}{fit}  {}", gib(r.peak_bytes), dominant(r.peak_phase()));
        println!("{line}");
    }
    if p.host_text_encoder_bytes > 0 {
        println!("host RAM for the CPU text encoder: {}", gib(p.host_text_encoder_bytes));
    }
}

/// The terms of every phase of the rank with the highest peak (the others differ in the VAE and
/// text-encoder terms only, which the table shows).
fn print_terms(ranks: &[RankPrediction]) {
    let Some(r) = ranks.iter().max_by_key(|r| r.peak_bytes) else { return };
    println!("terms of rank {} (the highest peak):", r.rank);
    for ph in &r.phases {
        let terms: Vec<String> = ph.terms.iter().map(|t| format!("{} {}", t.name, gib(t.bytes))).collect();
        println!("  {:<13} {:>10} = {}", ph.name, gib(ph.peak_bytes), terms.join(" + "));
    }
}

fn dominant(phase: Option<&PhasePrediction>) -> String {
    match phase.and_then(|ph| ph.dominant().map(|t| (ph, t))) {
        Some((ph, t)) => format!("{}: {} {}", ph.name, t.name, gib(t.bytes)),
        None => String::new(),
    }
}
