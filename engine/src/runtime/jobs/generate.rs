//! The `Generate` job: a whole generation across the world, as a [`ParallelPlan`] lays it out, for
//! either family (Wan, HunyuanVideo 1.5 text- and image-to-video): the family seams are the transformer
//! ([`crate::pipeline::sharded::Expert`]), the VAE ([`Vae`]), the schedule ([`request::schedule`]) and
//! the latents' scaling before the decode ([`vae_latents`]).
//!
//! Phases (each a `PhaseSpan` with its memory peak): `load` (every rank its transformer part: stem
//! replicated, blocks whole or its FSDP slices; the VAE on the ranks that decode, the encoder on
//! the VAE group for I2V; under phased residency only the first step's expert), `encode_image` (I2V, on
//! the VAE group — rank 0 alone when it is one rank —: the image encoded patch-parallel; HV1.5 rank 0
//! first runs SigLIP), `denoise` — for
//! two-expert models `denoise_high`, [`switch`,] `denoise_low`, see [`experts`] — (the shared loop with [`ShardedPredictor`]: CFG branches on the two
//! halves of the world, Ulysses inside each half, FSDP gathers per block), `decode` (the VAE group
//! `0..vae_parallel` in tiles or halo mode, with `VaePiece` events; rank 0 alone when it is 1).
//! Rank 0 sends one progress event per step, the final latents before the decode and the decoded
//! frames after it, as `JobData` over the control channel: the host writes any file.
//!
//! Prompt embeddings arrive ready (`plan.text_encoder` says who made them: the host, or this world
//! in a preceding `EncodePrompt` job). Every rank returns [`GenerateStats`] (weights, step times, time inside collectives).

mod experts;
mod inputs;
mod resident;
mod timed;

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};

use super::{JobCtx, JobError};
use crate::model_spec::ModelSpec;
use crate::models::vae::{self, Vae};
use crate::models::wan::vae::parallel::DecodedPiece;
use crate::models::wan::vae::{Tiling, VaeParts, VaeProgress};
use crate::parallel::comm::Collective;
use crate::parallel::plan::VaeMode;
use crate::pipeline::denoise::{run_loop, LoopSpec};
use crate::pipeline::preview::{LatentRgb, PREVIEW_MAX_SIDE};
use crate::pipeline::request;
use crate::pipeline::sampling::{self, LatentStats};
use crate::pipeline::sharded::{PlanGroups, ShardedPredictor};
use crate::pipeline::wan as wan_pipeline;
use crate::pipeline::PipelineProgress;
use crate::runtime::protocol::{
    DenoisePreview, GenerateSpec, GenerateStats, JobData, JobOutput, LogLevel, Rgb8Preview, WireTensor, WorkerEvent,
};
use experts::ExpertPhases;
use resident::{Resident, ResidentKey};
use timed::{CommStats, TimedComm};

fn invalid(e: impl std::fmt::Display) -> JobError {
    JobError::Invalid(e.to_string())
}

/// Bytes of decoded video per `JobData::VideoFrames` message (a few frames at 720p).
const VIDEO_CHUNK_BYTES: usize = 64 << 20;

pub fn run(ctx: &JobCtx, spec: &GenerateSpec) -> Result<JobOutput, JobError> {
    let device = ctx.device().clone();
    // bf16 on GPUs like the single-device pipeline would; f32 on the CPU (no bf16 conv there).
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let (plan, params, rank) = (spec.plan, &spec.params, ctx.rank());
    let model = ModelSpec::open(&spec.model, &spec.files).map_err(invalid)?;
    request::check(&model, params, &plan, spec.image.is_some()).map_err(invalid)?;
    let vae_cfg = &model.vae;
    let cfg_on = params.cfg();

    let embeds = inputs::prompt_embeds(spec, cfg_on)?;
    let shape = wan_pipeline::latent_shape(params, vae_cfg.scale_factor_spatial, vae_cfg.z_dim);
    let given = spec.latents.as_ref().map(|w| w.to_tensor(&device)).transpose()?;
    let latents = wan_pipeline::initial_latents(params, &shape, given.as_ref(), &device).map_err(invalid)?;

    // Decoding ranks: the VAE group `0..vae_parallel` (rank 0 alone when it is 1).
    let decodes = spec.decode && (plan.vae_group().contains(&rank) || rank.0 == 0);
    // The VAE group encodes the image patch-parallel (rank 0 alone when it is one rank).
    let encodes = spec.image.is_some() && (plan.vae_group().contains(&rank) || rank.0 == 0);
    let parts = match (decodes, encodes) {
        (true, true) => Some(VaeParts::Both),
        (true, false) => Some(VaeParts::Decoder),
        (false, true) => Some(VaeParts::Encoder),
        (false, false) => None,
    };
    let key = ResidentKey::new(&model, plan, dtype, parts);
    // The timesteps say which expert runs first (phased residency loads only that one).
    let origin = model.components.scheduler.clone().unwrap_or_else(|| model.root.clone());
    let mut sched = request::schedule(&model, params, &origin).map_err(invalid)?;
    let mut loop_spec = LoopSpec::new(&model, params, dtype);
    // Only rank 0 reports pictures: every rank holds the same latents.
    loop_spec.preview_every = spec.preview_every.filter(|_| rank.0 == 0);
    let first_expert = sched.timesteps().first().map_or(0, |&t| loop_spec.expert_at(t));
    let only = experts::to_load(plan.residency, model.two_experts(), first_expert);
    let load_started = Instant::now();
    let (stats, world, groups, mut predictor, vae, vae_bytes, mut out_stats) = {
        let _load = ctx.phase("load");
        let (stats, world, groups, mut slots, vae, vae_bytes, mut reused) = match resident::take(&key) {
            Some(r) => {
                r.stats.reset();
                (r.stats, r.world, r.groups, r.experts, r.vae, r.vae_bytes, true)
            }
            None => {
                let stats = Arc::new(CommStats::default());
                let world: Arc<dyn Collective> = Arc::new(TimedComm::new(ctx.comm().clone(), stats.clone()));
                let groups = PlanGroups::new(&plan, &world)?;
                let experts = ShardedPredictor::load_experts(&model, only, &groups, dtype, &device)?;
                let vae = parts
                    .map(|p| vae::load_for_model(&model, p, vae::run_dtype(model.family, &device), &device))
                    .transpose()
                    .map_err(invalid)?;
                let vae_bytes = if vae.is_some() { model.vae_weights().table()?.stored_bytes() } else { 0 };
                (stats, world, groups, experts, vae, vae_bytes, false)
            }
        };
        // Phased residency kept the last run's low-noise expert: free it before reading the first.
        if let Some(first) = only {
            if slots.get(first).is_some_and(Option::is_none) {
                slots.iter_mut().for_each(|s| *s = None);
                slots[first] = Some(ShardedPredictor::load_expert(&model, first, &groups, dtype, &device)?);
                reused = false;
            }
        }
        let mut predictor =
            ShardedPredictor::with_branches(slots, &groups, &embeds.prompt, embeds.negative.as_ref(), dtype, &device)?;
        // A meanflow (step-distilled) transformer's `timestep_r` is the next timestep.
        predictor.set_schedule(sched.timesteps());
        let transformer_bytes = predictor.resident_bytes();
        ctx.add_weights_bytes(transformer_bytes + vae_bytes);
        let block_bytes = predictor.loaded().next().map(|e| e.block_bytes()).unwrap_or(0);
        let s = GenerateStats {
            weights_bytes: transformer_bytes + vae_bytes,
            transformer_bytes,
            block_bytes,
            weights_reused: reused,
            ..GenerateStats::default()
        };
        (stats, world, groups, predictor, vae, vae_bytes, s)
    };
    if rank.0 == 0 {
        let gib = (out_stats.weights_bytes as f64) / (1u64 << 30) as f64;
        let message = if out_stats.weights_reused {
            format!("weights still loaded from the previous run ({gib:.2} GiB on rank 0): nothing read")
        } else {
            format!("loaded {gib:.2} GiB of weights on rank 0 in {:.1} s", load_started.elapsed().as_secs_f64())
        };
        ctx.log(LogLevel::Info, message);
    }
    let latent_stats = LatentStats::new(&vae_cfg.latents_mean, &vae_cfg.latents_std, &device)?;
    let condition = match &spec.image {
        Some(path) if model.hv15.is_some() => {
            // One `encode_image` phase on the encoding ranks: rank 0 runs SigLIP (its image
            // embeddings join both branches' context), then the VAE group encodes the image.
            let _encode = encodes.then(|| ctx.phase("encode_image"));
            predictor.set_image_embeds(&inputs::hv15_image_embeds(ctx, &world, &model, path, params)?)?;
            Some(inputs::hv15_image_condition(
                ctx,
                &world,
                groups.vae.as_ref(),
                &plan,
                vae.as_ref(),
                &model,
                path,
                params,
                &shape,
            )?)
        }
        Some(path) => Some(inputs::image_condition(
            ctx,
            &world,
            groups.vae.as_ref(),
            &plan,
            vae.as_ref(),
            &latent_stats,
            model.index.expand_timesteps,
            path,
            params,
            &shape,
        )?),
        None => None,
    };

    let fsdp_wait_before: f64 = predictor.loaded().map(|e| e.gather_wait_seconds()).sum();
    let mut phased = ExpertPhases::new(ctx, predictor, &model, &groups, dtype);
    let latents = {
        let to_rgb = LatentRgb::for_latent_channels(vae_cfg.z_dim);
        let (mut last, mut last_comm, mut cancelled) = (Instant::now(), stats.seconds(), false);
        let result = run_loop(&loop_spec, sched.as_mut(), latents, condition.as_ref(), &mut phased, &mut |p| {
            if let PipelineProgress::Preview { index, total, x0 } = &p {
                let img = to_rgb.project(x0, PREVIEW_MAX_SIDE)?;
                let preview = Rgb8Preview { width: img.width as u32, height: img.height as u32, rgb: img.rgb };
                ctx.emit(WorkerEvent::DenoisePreview(DenoisePreview { step: index + 1, total: *total, preview }));
            }
            if let PipelineProgress::Step { index, total, expert, .. } = p {
                let comm = stats.seconds();
                out_stats.step_seconds.push(last.elapsed().as_secs_f64());
                out_stats.step_comm_seconds.push(comm - last_comm);
                out_stats.step_experts.push(expert);
                if rank.0 == 0 {
                    ctx.progress(index as u64 + 1, total as u64, "denoise");
                }
                if let Err(e) = ctx.check_cancelled() {
                    cancelled = matches!(e, JobError::Cancelled);
                    return Err(candle_core::Error::msg(e.to_string()));
                }
                // Not counting the cancel check: it is control, not the step's work.
                (last, last_comm) = (Instant::now(), stats.seconds());
            }
            Ok(())
        });
        match result {
            Err(_) if cancelled => {
                // Every rank stopped at the same step: the world and the weights stay usable.
                if spec.keep_weights {
                    let experts = phased.finish().into_experts();
                    resident::keep(Resident { key, stats, world, groups, experts, vae, vae_bytes });
                }
                return Err(JobError::Cancelled);
            }
            r => r?,
        }
    };
    out_stats.switched_bytes = phased.switched_bytes;
    let predictor = phased.finish();
    out_stats.fsdp_prefetch = groups.fsdp_prefetch.is_some();
    // The stores count from their load: a reused expert's earlier jobs are subtracted; an expert
    // switched in during this job counts from its load (the one switched out is not counted).
    let waited: f64 = predictor.loaded().map(|e| e.gather_wait_seconds()).sum();
    out_stats.fsdp_wait_seconds = if out_stats.switched_bytes == 0 { waited - fsdp_wait_before } else { waited };
    // `keep_weights: false` frees the transformer before the decode (a lower decode peak; the next
    // run loads it again).
    let experts = spec.keep_weights.then(|| predictor.into_experts());

    if rank.0 == 0 {
        ctx.emit(WorkerEvent::Data(JobData::Latents(WireTensor::from_tensor(&latents)?)));
    }
    {
        // Every rank reports the phase (ranks outside the VAE group spend it waiting), so the
        // report and the planner line up rank by rank.
        let _decode = ctx.phase("decode");
        let video = match &vae {
            Some(vae) if decodes => decode(ctx, &plan, &groups, vae, &latent_stats, &latents)?,
            _ => None,
        };
        if let Some(video) = video {
            send_video(ctx, &video)?;
        }
    }
    ctx.comm().barrier()?;
    out_stats.comm_seconds = stats.seconds();
    out_stats.comm_calls = stats.calls();
    out_stats.comm_bytes = stats.bytes();
    if let Some(experts) = experts {
        resident::keep(Resident { key, stats, world, groups, experts, vae, vae_bytes });
    }
    Ok(JobOutput::Generate(out_stats))
}

/// The denoised latents as the VAE takes them: Wan's denormalised with its per-channel statistics,
/// HunyuanVideo 1.5's divided by `scaling_factor` (its pipeline's `latents / scaling_factor`).
fn vae_latents(vae: &Vae, stats: &LatentStats, latents: &Tensor) -> candle_core::Result<Tensor> {
    let latents = latents.to_dtype(DType::F32)?;
    match vae {
        Vae::Wan(_) => stats.denormalize(&latents),
        Vae::Hv15(m) => latents / m.config().scaling_factor,
    }
}

/// Normalised latents → video `(1, F, 3, H, W)` in [0, 1] on rank 0 (`None` elsewhere): over the
/// VAE group in the plan's mode (tiles or halo, with `VaePiece` events), or on rank 0 alone.
fn decode(
    ctx: &JobCtx,
    plan: &crate::parallel::plan::ParallelPlan,
    groups: &PlanGroups,
    vae: &Vae,
    stats: &LatentStats,
    latents: &Tensor,
) -> Result<Option<Tensor>, JobError> {
    let z = vae_latents(vae, stats, latents)?;
    let lead = ctx.rank().0 == 0;
    let mut progress = |p: VaeProgress| {
        if lead {
            let (i, n) = match p {
                VaeProgress::Chunk { index, total } | VaeProgress::Tile { index, total, .. } => (index, total),
            };
            ctx.progress(i as u64 + 1, n as u64, "decode");
        }
    };
    let tiling = match plan.vae_mode {
        VaeMode::Tiles => Some(plan.vae_tiling.unwrap_or_default()),
        VaeMode::Halo => None,
    }
    .map(Tiling::from);
    let video = match &groups.vae {
        Some(comm) => {
            let mut on_piece = |p: DecodedPiece<'_>| ctx.emit(WorkerEvent::VaePiece(super::vae::piece_event(&p)));
            vae.decode_parallel(&z, comm, plan.vae_mode, tiling.as_ref(), &mut progress, &mut on_piece)?
        }
        None if lead => Some(vae.decode(&z, tiling.as_ref(), &mut progress)?),
        None => None,
    };
    Ok(video.map(|v| sampling::video_to_unit_range(&v)).transpose()?)
}

/// Sends `video` `(1, F, 3, H, W)` to the supervisor in chunks of whole frames.
fn send_video(ctx: &JobCtx, video: &Tensor) -> Result<(), JobError> {
    let frames = video.squeeze(0)?.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?;
    let (total, c, h, w) = frames.dims4()?;
    let per_chunk = (VIDEO_CHUNK_BYTES / (c * h * w * 4).max(1)).max(1);
    for first in (0..total).step_by(per_chunk) {
        let n = per_chunk.min(total - first);
        let chunk = WireTensor::from_tensor(&frames.narrow(0, first, n)?.contiguous()?)?;
        ctx.emit(WorkerEvent::Data(JobData::VideoFrames { first, total, frames: chunk }));
    }
    Ok(())
}
