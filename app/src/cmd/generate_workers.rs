//! `tessera generate` on worker processes: the flags become a [`ParallelPlan`] (checked against the
//! model before any worker starts; the error proposes a valid plan), the host encodes prompts if
//! asked to, and the `Generate` job runs through the [`Supervisor`]. `--report` adds, per rank, the
//! job's [`GenerateStats`] (resident weights, step times, time in collectives and its share).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use tessera_engine::media::OutputKind;
use tessera_engine::models::wan::transformer::Config as DitConfig;
use tessera_engine::parallel::comm::wire::{tensor_to_bytes, WireDType};
use tessera_engine::parallel::plan::{ParallelPlan, PlanModel, TextEncoderPlacement, VaeMode};
use tessera_engine::pipeline::GenerateParams;
use tessera_engine::runtime::protocol::{EmbedsSource, GenerateSpec, GenerateStats, Job, JobOutput, WireTensor};
use tessera_engine::runtime::{DeviceKind, JobEvent, JobResult, Supervisor, WorldSpec};
use tessera_engine::weights::load_config;

use super::generate::GenerateArgs;

/// The plan the flags ask for: `--ranks` defaults to U × C, `--ulysses` to ranks / C.
pub fn plan_from_args(a: &GenerateArgs) -> ParallelPlan {
    let cfg_parallel = a.cfg_parallel.unwrap_or(1);
    let ranks = a.ranks.unwrap_or(a.ulysses.unwrap_or(1) * cfg_parallel);
    let ulysses = a.ulysses.unwrap_or(ranks.checked_div(cfg_parallel).unwrap_or(ranks));
    ParallelPlan {
        ranks,
        ulysses,
        cfg_parallel,
        fsdp: a.fsdp.unwrap_or(1),
        vae_parallel: a.vae_parallel.unwrap_or(1),
        // Tiles are what --tiling implies when no mode is named.
        vae_mode: a.vae_mode.unwrap_or(if a.tiling.is_some() { VaeMode::Tiles } else { VaeMode::Halo }),
        vae_tiling: a.tiling,
        text_encoder: a.text_encoder.unwrap_or_default(),
    }
}

fn params(a: &GenerateArgs) -> GenerateParams {
    GenerateParams {
        height: a.height,
        width: a.width,
        frames: a.frames,
        steps: a.steps,
        guidance: a.guidance,
        guidance_2: a.guidance_2,
        shift: a.shift,
        seed: a.seed,
    }
}

/// Prompt sources: files stay files (every rank reads them); text is encoded here and sent inline.
fn embeds(a: &GenerateArgs) -> Result<(EmbedsSource, Option<EmbedsSource>)> {
    let file = |p: &Path, name: &str| EmbedsSource::File { path: p.to_path_buf(), name: name.into() };
    let cfg_on = a.guidance > 1.0;
    match (&a.prompt_embeds, &a.negative_prompt_embeds) {
        (Some(p), Some(n)) => return Ok((file(p, "prompt_embeds"), Some(file(n, "negative_prompt_embeds")))),
        (Some(p), None) if !cfg_on && a.negative_prompt.is_none() => return Ok((file(p, "prompt_embeds"), None)),
        _ => {}
    }
    let e = super::generate::prompt_embeds(a, &Device::Cpu)?;
    let inline = |t: &candle_core::Tensor| -> Result<EmbedsSource> {
        let t = t.to_dtype(candle_core::DType::F32)?;
        Ok(EmbedsSource::Inline(WireTensor {
            dtype: WireDType::F32,
            shape: t.dims().to_vec(),
            bytes: tensor_to_bytes(&t)?,
        }))
    };
    Ok((inline(&e.prompt)?, e.negative.as_ref().map(inline).transpose()?))
}

pub fn run(a: &GenerateArgs) -> Result<()> {
    OutputKind::of(&a.out).map_err(anyhow::Error::msg)?;
    let plan = plan_from_args(a);
    let dit: DitConfig = load_config(&a.model.join("transformer"))
        .with_context(|| format!("reading the transformer config of {}", a.model.display()))?;
    plan.validate(PlanModel { num_heads: dit.num_attention_heads, cfg: a.guidance > 1.0 })?;
    params(a).validate(1)?; // frames/steps/guidance now; sizes on the workers (they know the VAE)
    let device = if a.device == "cuda" { DeviceKind::Cuda } else { DeviceKind::Cpu };
    let mut sup = Supervisor::spawn(WorldSpec { ranks: plan.ranks, device, ..WorldSpec::default() })
        .context("starting the workers")?;
    // `--text-encoder sharded`: a first job on the same workers encodes the prompts with UMT5 split by
    // layer over the ranks (and frees it) before the denoise job loads the transformer.
    let scratch = tempfile::tempdir().context("creating a scratch folder for the prompt embeddings")?;
    let (prompt, negative) = match sharded_prompts(a, &plan) {
        Some(prompts) => encode_on_workers(&mut sup, a, prompts, scratch.path())?,
        None => embeds(a)?,
    };
    let spec = GenerateSpec {
        model: a.model.clone(),
        params: params(a),
        plan,
        prompt,
        negative,
        image: a.image.clone(),
        latents: a.latents.clone(),
        out: a.out.clone(),
        save_latents: a.save_latents.clone(),
        fps: a.fps,
        decode: true,
    };
    let pb = crate::progress::bar(a.steps as u64, "denoise");
    let result = sup.run_job(Job::Generate(Box::new(spec)), |e| {
        if let JobEvent::Progress { step, total, message, .. } = e {
            pb.set_message(message.clone());
            pb.set_length(*total);
            pb.set_position(*step);
        }
    });
    pb.finish_and_clear();
    sup.shutdown();
    let result = result.with_context(|| format!("generating on {} ranks", plan.ranks))?;
    if let Some(path) = &a.report {
        let text = serde_json::to_string_pretty(&report_json(&plan, &result))?;
        tessera_engine::tensor_io::write_file_atomic(path, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| e.to_string())
        })?;
    }
    tracing::info!("wrote {} ({} ranks, {:.2}s)", a.out.display(), plan.ranks, result.report.wall_seconds);
    Ok(())
}

/// The texts to encode on the workers, when the plan places the text encoder there and the prompt
/// is given as text (the negative defaults to "" under guidance, as in diffusers).
fn sharded_prompts(a: &GenerateArgs, plan: &ParallelPlan) -> Option<Vec<String>> {
    if plan.text_encoder != TextEncoderPlacement::Sharded {
        return None;
    }
    let prompt = a.prompt.clone()?;
    let mut prompts = vec![prompt];
    if a.guidance > 1.0 && a.negative_prompt_embeds.is_none() {
        prompts.push(a.negative_prompt.clone().unwrap_or_default());
    }
    Some(prompts)
}

/// Runs `Job::EncodePrompt` on the world and points the generate job at its output file.
fn encode_on_workers(
    sup: &mut Supervisor,
    a: &GenerateArgs,
    prompts: Vec<String>,
    scratch: &Path,
) -> Result<(EmbedsSource, Option<EmbedsSource>)> {
    use tessera_engine::runtime::protocol::EncodePromptSpec;
    let out = scratch.join("prompt-embeds.safetensors");
    let cache_dir = tessera_engine::text::PromptCache::default_dir();
    let with_negative = prompts.len() > 1;
    let spec = EncodePromptSpec {
        model: a.model.clone(),
        prompts,
        max_sequence_length: tessera_engine::text::DEFAULT_MAX_SEQUENCE_LENGTH,
        cache_dir,
        out: out.clone(),
    };
    sup.run_job(Job::EncodePrompt(spec), |_| {}).context("encoding the prompts with the sharded text encoder")?;
    let file = |name: &str| EmbedsSource::File { path: out.clone(), name: name.into() };
    let negative = match (&a.negative_prompt_embeds, with_negative) {
        (Some(p), _) => Some(EmbedsSource::File { path: p.clone(), name: "negative_prompt_embeds".into() }),
        (None, true) => Some(file("negative_prompt_embeds")),
        (None, false) => None,
    };
    Ok((file("prompt_embeds"), negative))
}

/// The supervisor's run report with the plan and each rank's `denoise` statistics added:
/// `weights_bytes`, `step_seconds`, `step_comm_seconds`, `comm_share` (time in collectives / step time).
pub fn report_json(plan: &ParallelPlan, result: &JobResult) -> serde_json::Value {
    let mut v = serde_json::to_value(&result.report).unwrap_or_default();
    v["plan"] = serde_json::to_value(plan).unwrap_or_default();
    if let Some(ranks) = v["ranks"].as_array_mut() {
        for (r, out) in ranks.iter_mut().zip(&result.outputs) {
            if let JobOutput::Generate(s) = out {
                r["denoise"] = denoise_json(s);
            }
        }
    }
    v
}

fn denoise_json(s: &GenerateStats) -> serde_json::Value {
    let total: f64 = s.step_seconds.iter().sum();
    let comm: f64 = s.step_comm_seconds.iter().sum();
    let mut v = serde_json::to_value(s).unwrap_or_default();
    let steps = s.step_seconds.len().max(1) as f64;
    v["mean_step_seconds"] = (total / steps).into();
    v["comm_share"] = (if total > 0.0 { comm / total } else { 0.0 }).into();
    v
}
