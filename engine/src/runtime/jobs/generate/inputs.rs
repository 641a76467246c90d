//! The inputs of a `Generate` job on each rank: prompt embeddings from the spec, and the I2V image
//! condition (encoded by the VAE group, patch-parallel, then broadcast: only the VAE group needs the
//! VAE encoder).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::super::{JobCtx, JobError};
use crate::models::wan::vae::AutoencoderKLWan;
use crate::models::wan::vae::Tiling;
use crate::parallel::comm::Collective;
use crate::parallel::plan::{ParallelPlan, VaeMode};
use crate::parallel::Rank;
use crate::pipeline::denoise::Condition;
use crate::pipeline::image::load_image;
use crate::pipeline::sampling::LatentStats;
use crate::pipeline::sharded::BranchEmbeds;
use crate::pipeline::wan::{condition_from_mean, condition_video};
use crate::pipeline::GenerateParams;
use crate::runtime::protocol::{GenerateSpec, WireTensor};

pub struct Embeds {
    pub prompt: BranchEmbeds,
    pub negative: Option<BranchEmbeds>,
}

fn load(w: &WireTensor) -> Result<Tensor, JobError> {
    Ok(w.to_tensor(&Device::Cpu)?)
}

/// The prompt and (with CFG) negative embeddings, each with its glyph embeddings (HunyuanVideo
/// 1.5); CFG without a negative is an input error.
pub fn prompt_embeds(spec: &GenerateSpec, cfg_on: bool) -> Result<Embeds, JobError> {
    let branch = |text: &WireTensor, glyph: Option<&WireTensor>| -> Result<BranchEmbeds, JobError> {
        Ok(BranchEmbeds { text: load(text)?, glyph: glyph.map(load).transpose()? })
    };
    let prompt = branch(&spec.prompt, spec.prompt_2.as_ref())?;
    let negative = match (&spec.negative, cfg_on) {
        (Some(n), true) => Some(branch(n, spec.negative_2.as_ref())?),
        (_, false) => None,
        (None, true) => {
            return Err(JobError::Invalid(
                "guidance > 1 needs negative prompt embeddings: pass --negative-prompt or --negative-prompt-embeds (or --guidance 1)".into(),
            ))
        }
    };
    Ok(Embeds { prompt, negative })
}

/// The image condition on every rank: the VAE group (`0..vae_parallel`, which holds the encoder)
/// encodes the image (A14B: with its zero frames) patch-parallel in the plan's VAE mode — halo
/// slabs (equal to the untiled encode) or tiles — or rank 0 alone when the group is one rank; the
/// world then broadcasts rank 0's condition (the TI2V masks are rebuilt locally from the shape).
#[allow(clippy::too_many_arguments)]
pub fn image_condition(
    ctx: &JobCtx,
    world: &Arc<dyn Collective>,
    vae_group: Option<&Arc<dyn Collective>>,
    plan: &ParallelPlan,
    vae: Option<&AutoencoderKLWan>,
    stats: &LatentStats,
    expand_timesteps: bool,
    path: &Path,
    params: &GenerateParams,
    latent_shape: &[usize; 5],
) -> Result<Condition, JobError> {
    let device = ctx.device();
    let [_, z, t, h, w] = *latent_shape;
    // TI2V: the image latent alone; A14B: mask (4 channels) + latent of image and zero frames.
    let shape: Vec<usize> = if expand_timesteps { vec![1, z, 1, h, w] } else { vec![1, 4 + z, t, h, w] };
    let encodes = vae_group.is_some() || ctx.rank() == Rank(0);
    let mine = if encodes {
        let _encode = ctx.phase("encode_image");
        let vae = vae.ok_or_else(|| JobError::Invalid(format!("rank {} has no VAE encoder loaded", ctx.rank().0)))?;
        let invalid = |e: String| JobError::Invalid(e);
        let image = load_image(path, params.height, params.width, device).map_err(invalid)?;
        let video = condition_video(expand_timesteps, &image, params).map_err(|e| invalid(e.to_string()))?;
        let tiling = match plan.vae_mode {
            VaeMode::Tiles => Some(Tiling::from(plan.vae_tiling.unwrap_or_default())),
            VaeMode::Halo => None,
        };
        let moments = match vae_group {
            Some(group) => vae.encode_parallel(&video, group, plan.vae_mode, tiling.as_ref(), &mut |_| {})?,
            None => vae.encode(&video, tiling.as_ref(), &mut |_| {})?,
        };
        drop(video);
        let cond =
            condition_from_mean(stats, expand_timesteps, &moments.mean, params).map_err(|e| invalid(e.to_string()))?;
        cond.payload().clone()
    } else {
        Tensor::zeros(shape.as_slice(), DType::F32, device)?
    };
    if mine.dims() != shape.as_slice() {
        return Err(JobError::Invalid(format!("image condition {:?}, expected {shape:?}", mine.dims())));
    }
    let payload = world.broadcast(&mine.contiguous()?, Rank(0))?;
    Ok(if expand_timesteps { Condition::first_frame(payload, t)? } else { Condition::Channels(payload) })
}
