//! `tessera bench denoise`: the sharded denoise on worker processes at real width (a `make-model`
//! pipeline with few blocks), for 1, 2 and 4 ranks under Ulysses + FSDP and CFG-parallel layouts.
//! Per rank: resident transformer weights (and the FSDP bound `1/N` of the blocks + one block +
//! the replicated stem), heap peak of the denoise phase, mean step time and the share of it spent
//! inside collectives. The VAE is skipped (`decode: false`): this measures the denoise only.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use serde::Serialize;
use tessera_engine::api::random_models::{write_pipeline, Arch, PipelineSpec, StoreDtype, DIFFUSERS_SHARD_BYTES};
use tessera_engine::api::{GenerateParams, GenerationRequest, ParallelPlan, Prompt, Session, SessionOptions};

#[derive(Args, Debug)]
pub struct BenchDenoiseArgs {
    /// Where the make-model pipeline is kept between runs.
    #[arg(long, default_value = "target/bench-models")]
    pub models_dir: PathBuf,
    /// Transformer blocks of the TI2V-5B pipeline (real widths; the real model has 30).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    #[arg(long, default_value_t = 5)]
    pub frames: usize,
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Layouts as U,C,F per case, `;`-separated (ranks = U·C).
    #[arg(long, default_value = "1,1,1;2,1,2;1,2,2;4,1,4;2,2,4")]
    pub plans: String,
    /// Also write the rows as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    plan: String,
    ranks: usize,
    rank: usize,
    transformer_bytes: u64,
    /// Stem + ⌈blocks/F⌉ + the gathered block (two with prefetch): what FSDP F may hold per rank.
    fsdp_bound_bytes: u64,
    denoise_peak_bytes: u64,
    mean_step_seconds: f64,
    comm_share: f64,
    /// FSDP: next block gathered during the current one; share of step time blocked on gathers.
    fsdp_prefetch: bool,
    fsdp_wait_share: f64,
}

fn parse_plans(s: &str) -> Result<Vec<ParallelPlan>> {
    s.split(';')
        .map(|p| {
            let v: Vec<usize> = p
                .split(',')
                .map(|x| x.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--plans entry `{p}` is not U,C,F"))?;
            let [u, c, f] = v[..] else { anyhow::bail!("--plans entry `{p}` is not U,C,F") };
            Ok(ParallelPlan { ranks: u * c, ulysses: u, cfg_parallel: c, fsdp: f, ..Default::default() })
        })
        .collect()
}

pub fn run(a: BenchDenoiseArgs) -> Result<()> {
    let plans = parse_plans(&a.plans)?;
    let model = a.models_dir.join(format!("wan2.2-ti2v-5b-{}l", a.layers));
    if !model.join("model_index.json").is_file() {
        let spec = PipelineSpec::for_arch(Arch::Wan22Ti2v5b, Some(a.layers))?.context("TI2V is a pipeline arch")?;
        write_pipeline(&model, &spec, 0, StoreDtype::F32, DIFFUSERS_SHARD_BYTES)?;
    }
    let dev = Device::Cpu;
    let tmp = tempfile_dir()?;
    // UMT5-XXL-shaped embeddings (512 tokens × 4096), as files the workers read.
    let embeds = tmp.join("embeds.safetensors");
    tessera_engine::api::write_tensors(
        &embeds,
        &[
            ("prompt_embeds", Tensor::randn(0f32, 1., (1, 512, 4096), &dev)?),
            ("negative_prompt_embeds", Tensor::randn(0f32, 1., (1, 512, 4096), &dev)?),
        ],
    )?;
    let mut session = Session::new(SessionOptions::default());
    let mut rows = Vec::new();
    println!(
        "| plan | rank | transformer weights | FSDP bound | denoise heap peak | step | comm share | FSDP gather wait |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for plan in plans {
        let name = format!("U{} C{} F{}", plan.ulysses, plan.cfg_parallel, plan.fsdp);
        let params = GenerateParams {
            height: a.height,
            width: a.width,
            frames: a.frames,
            steps: a.steps,
            guidance: 5.0,
            guidance_2: None,
            shift: None,
            seed: 0,
            scheduler: None,
            sigmas: None,
        };
        let request = GenerationRequest {
            negative: Some(Prompt::Embeds(embeds.clone())),
            plan,
            decode: false,
            ..GenerationRequest::new(&model, Prompt::Embeds(embeds.clone()), params)
        };
        let generation = session
            .generate(&request, &mut |_| {})
            .map_err(|e| anyhow::anyhow!(e.cli()))
            .with_context(|| format!("bench case {name}"))?;
        for (r, rep) in generation.report.ranks.iter().enumerate() {
            let s = &rep.denoise.as_ref().with_context(|| format!("rank {r} returned no statistics"))?.stats;
            let blocks = s.block_bytes * a.layers as u64;
            let stem = s.transformer_bytes.saturating_sub(blocks / plan.fsdp as u64);
            // FSDP holds the running block, and with prefetch the next one too.
            let gathered = match (plan.fsdp > 1, s.fsdp_prefetch) {
                (false, _) => 0,
                (true, false) => s.block_bytes,
                (true, true) => 2 * s.block_bytes,
            };
            let bound = stem + blocks.div_ceil(plan.fsdp as u64) + gathered;
            let total: f64 = s.step_seconds.iter().sum();
            let comm: f64 = s.step_comm_seconds.iter().sum();
            let peak = rep.run.phases.iter().find(|p| p.name == "denoise").map(|p| p.peak_bytes).unwrap_or(0);
            let row = Row {
                plan: name.clone(),
                ranks: plan.ranks,
                rank: r,
                transformer_bytes: s.transformer_bytes,
                fsdp_bound_bytes: bound,
                denoise_peak_bytes: peak,
                mean_step_seconds: total / s.step_seconds.len().max(1) as f64,
                comm_share: if total > 0.0 { comm / total } else { 0.0 },
                fsdp_prefetch: s.fsdp_prefetch,
                fsdp_wait_share: if total > 0.0 { s.fsdp_wait_seconds / total } else { 0.0 },
            };
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            println!(
                "| {} | {} | {:.2} GiB | {:.2} GiB | {:.2} GiB | {:.2} s | {:.1} % | {:.1} % ({}) |",
                row.plan,
                r,
                gib(row.transformer_bytes),
                gib(row.fsdp_bound_bytes),
                gib(row.denoise_peak_bytes),
                row.mean_step_seconds,
                100.0 * row.comm_share,
                100.0 * row.fsdp_wait_share,
                if row.fsdp_prefetch { "prefetch" } else { "no prefetch" },
            );
            rows.push(row);
        }
    }
    session.shutdown();
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tessera-bench-denoise-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
