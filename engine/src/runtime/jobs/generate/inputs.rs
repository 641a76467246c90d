//! The inputs of a `Generate` job on each rank: prompt embeddings from the spec, and the I2V image
//! condition (encoded once on rank 0 and broadcast, so only rank 0 needs the VAE encoder).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::super::{JobCtx, JobError};
use crate::models::wan::vae::AutoencoderKLWan;
use crate::parallel::comm::Collective;
use crate::parallel::Rank;
use crate::pipeline::denoise::Condition;
use crate::pipeline::image::load_image;
use crate::pipeline::sampling::LatentStats;
use crate::pipeline::wan::image_condition as encode_condition;
use crate::pipeline::GenerateParams;
use crate::runtime::protocol::{GenerateSpec, WireTensor};

pub struct Embeds {
    pub prompt: Tensor,
    pub negative: Option<Tensor>,
}

fn load(w: &WireTensor) -> Result<Tensor, JobError> {
    Ok(w.to_tensor(&Device::Cpu)?)
}

/// The prompt and (with CFG) negative embeddings; CFG without a negative is an input error.
pub fn prompt_embeds(spec: &GenerateSpec, cfg_on: bool) -> Result<Embeds, JobError> {
    let prompt = load(&spec.prompt)?;
    let negative = match (&spec.negative, cfg_on) {
        (Some(n), true) => Some(load(n)?),
        (_, false) => None,
        (None, true) => {
            return Err(JobError::Invalid(
                "guidance > 1 needs negative prompt embeddings: pass --negative-prompt or --negative-prompt-embeds (or --guidance 1)".into(),
            ))
        }
    };
    Ok(Embeds { prompt, negative })
}

/// The image condition on every rank: rank 0 loads and encodes `path`, the world broadcasts the
/// latent part (the masks are rebuilt locally from the shape).
#[allow(clippy::too_many_arguments)]
pub fn image_condition(
    ctx: &JobCtx,
    world: &Arc<dyn Collective>,
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
    let mine = if ctx.rank() == Rank(0) {
        let _encode = ctx.phase("encode_image");
        let vae = vae.ok_or_else(|| JobError::Invalid("rank 0 has no VAE encoder loaded".into()))?;
        let image = load_image(path, params.height, params.width, device).map_err(JobError::Invalid)?;
        let cond = encode_condition(vae, stats, expand_timesteps, &image, params)
            .map_err(|e| JobError::Invalid(e.to_string()))?;
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
