//! `tessera generate` on worker processes: the flags become a [`ParallelPlan`] (checked against the
//! model before any worker starts; the error proposes a valid plan), prompts are encoded on the host
//! (`--text-encoder cpu`) or by the same world first (`sharded`: `Job::EncodePrompt`, the encoder
//! split by layer), and the `Generate` job runs through the [`Supervisor`]. `--report` adds, per rank, the
//! job's [`GenerateStats`] (resident weights, step times, time in collectives and its share).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use tessera_engine::media::OutputKind;
use tessera_engine::models::wan::transformer::Config as DitConfig;
use tessera_engine::parallel::comm::wire::{tensor_to_bytes, WireDType};
use tessera_engine::parallel::plan::{ParallelPlan, PlanModel, TextEncoderPlacement, VaeMode};
use tessera_engine::pipeline::GenerateParams;
use tessera_engine::runtime::protocol::{
    EmbedsSource, EncodePromptSpec, GenerateSpec, GenerateStats, Job, JobOutput, WireTensor,
};
use tessera_engine::runtime::{DeviceKind, JobEvent, JobResult, Supervisor, WorldSpec};
use tessera_engine::text::{PromptCache, DEFAULT_MAX_SEQUENCE_LENGTH};
use tessera_engine::weights::load_config;

use super::generate::GenerateArgs;

/// The plan: `--preset`'s with the explicit flags on top, or the flags alone.
pub fn plan_from_args(a: &GenerateArgs) -> Result<ParallelPlan> {
    let Some(path) = &a.preset else { return Ok(plan_from_flags(a)) };
    let preset = tessera_engine::planner::preset::load(path)
        .with_context(|| format!("loading the preset {}", path.display()))?;
    let explicit = tessera_engine::planner::preset::Explicit {
        ranks: a.ranks,
        ulysses: a.ulysses,
        cfg_parallel: a.cfg_parallel,
        fsdp: a.fsdp,
        vae_parallel: a.vae_parallel,
        vae_mode: a.vae_mode,
        vae_tiling: a.tiling,
        text_encoder: a.text_encoder,
        ..Default::default()
    };
    Ok(preset.apply(&explicit).plan)
}

fn plan_from_flags(a: &GenerateArgs) -> ParallelPlan {
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

/// `--text-encoder sharded`: the prompt texts the world must encode (prompt first, then the
/// negative, `""` by default under CFG) and the tensor names the text job writes them under.
fn texts_to_encode(a: &GenerateArgs) -> Vec<(String, &'static str)> {
    let mut texts = Vec::new();
    if a.prompt_embeds.is_none() {
        if let Some(p) = &a.prompt {
            texts.push(p.clone());
        }
    }
    let want_negative = a.guidance > 1.0 || a.negative_prompt.is_some();
    if a.negative_prompt_embeds.is_none() && want_negative {
        texts.push(a.negative_prompt.clone().unwrap_or_default());
    }
    // The text job names its outputs by position.
    texts.into_iter().zip(["prompt_embeds", "negative_prompt_embeds"]).collect()
}

/// Runs the sharded text encoder on the world (`Job::EncodePrompt`) into `file` and returns the
/// generate job's embedding sources, plus the text job's result for the report.
fn encode_in_world(
    a: &GenerateArgs,
    sup: &mut Supervisor,
    file: &Path,
) -> Result<(EmbedsSource, Option<EmbedsSource>, Option<JobResult>)> {
    let texts = texts_to_encode(a);
    let from_file = |p: &Path, name: &str| EmbedsSource::File { path: p.to_path_buf(), name: name.into() };
    let result = if texts.is_empty() {
        None
    } else {
        let spec = EncodePromptSpec {
            model: a.model.clone(),
            prompts: texts.iter().map(|(t, _)| t.clone()).collect(),
            max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
            cache_dir: PromptCache::default_dir(),
            out: file.to_path_buf(),
        };
        Some(sup.run_job(Job::EncodePrompt(spec), |_| {}).context("encoding the prompts on the workers")?)
    };
    let mut encoded = texts.iter().map(|(_, name)| from_file(file, name));
    let prompt = match &a.prompt_embeds {
        Some(p) => from_file(p, "prompt_embeds"),
        None => encoded.next().context("--prompt or --prompt-embeds is required")?,
    };
    let negative = match &a.negative_prompt_embeds {
        Some(n) => Some(from_file(n, "negative_prompt_embeds")),
        None => encoded.next(),
    };
    Ok((prompt, negative, result))
}

pub fn run(a: &GenerateArgs) -> Result<()> {
    OutputKind::of(&a.out).map_err(anyhow::Error::msg)?;
    let plan = plan_from_args(a)?;
    let dit: DitConfig = load_config(&a.model.join("transformer"))
        .with_context(|| format!("reading the transformer config of {}", a.model.display()))?;
    plan.validate(PlanModel { num_heads: dit.num_attention_heads, cfg: a.guidance > 1.0 })?;
    let vae: tessera_engine::models::wan::vae::Config =
        load_config(&tessera_engine::weights::component_dir(&a.model, "vae")?)?;
    params(a).validate(vae.scale_factor_spatial * dit.patch_size[1])?;
    let device = if a.device == "cuda" { DeviceKind::Cuda } else { DeviceKind::Cpu };
    let sharded_text = plan.text_encoder == TextEncoderPlacement::Sharded;
    let host_embeds = if sharded_text { None } else { Some(embeds(a)?) };
    let mut sup = Supervisor::spawn(WorldSpec { ranks: plan.ranks, device, ..WorldSpec::default() })
        .context("starting the workers")?;
    let text_file = std::env::temp_dir().join(format!("tessera-generate-{}-embeds.safetensors", std::process::id()));
    let (prompt, negative, text_result) = match host_embeds {
        Some((p, n)) => (p, n, None),
        None => match encode_in_world(a, &mut sup, &text_file) {
            Ok(x) => x,
            Err(e) => {
                sup.shutdown();
                return Err(e);
            }
        },
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
    let _ = std::fs::remove_file(&text_file);
    let result = result.with_context(|| format!("generating on {} ranks", plan.ranks))?;
    if let Some(path) = &a.report {
        let text = serde_json::to_string_pretty(&report_json(&plan, &result, text_result.as_ref()))?;
        tessera_engine::tensor_io::write_file_atomic(path, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| e.to_string())
        })?;
    }
    tracing::info!("wrote {} ({} ranks, {:.2}s)", a.out.display(), plan.ranks, result.report.wall_seconds);
    Ok(())
}

/// The supervisor's run report with the plan and each rank's `denoise` statistics added:
/// `weights_bytes`, `step_seconds`, `step_comm_seconds`, `comm_share` (time in collectives / step time).
/// With the sharded text encoder, its job's phases and wall time come first.
pub fn report_json(plan: &ParallelPlan, result: &JobResult, text: Option<&JobResult>) -> serde_json::Value {
    let mut v = serde_json::to_value(&result.report).unwrap_or_default();
    v["plan"] = serde_json::to_value(plan).unwrap_or_default();
    if let Some(text) = text {
        v["text_encoder_wall_seconds"] = text.report.wall_seconds.into();
        if let Some(ranks) = v["ranks"].as_array_mut() {
            for (r, t) in ranks.iter_mut().zip(&text.report.ranks) {
                let mut phases = serde_json::to_value(&t.phases).unwrap_or_default();
                if let (Some(p), Some(mine)) = (phases.as_array_mut(), r["phases"].as_array()) {
                    p.extend(mine.iter().cloned());
                    r["phases"] = phases;
                }
                r["text_encoder_weights_bytes"] = t.weights_bytes.into();
            }
        }
    }
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
