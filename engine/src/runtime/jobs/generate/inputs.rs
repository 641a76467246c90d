//! The inputs of a `Generate` job on each rank: prompt embeddings from the spec, and the I2V image
//! condition (encoded by the VAE group, patch-parallel, then broadcast: only the VAE group needs the
//! VAE encoder). HunyuanVideo 1.5 I2V also has SigLIP image embeddings (rank 0 runs the image
//! encoder, the world gets them by broadcast).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::super::{JobCtx, JobError};
use crate::model_spec::ModelSpec;
use crate::models::siglip::{self, ImageEncoder};
use crate::models::vae::Vae;
use crate::models::wan::vae::{Moments, Tiling};
use crate::parallel::comm::Collective;
use crate::parallel::plan::{ParallelPlan, VaeMode};
use crate::parallel::Rank;
use crate::pipeline::denoise::Condition;
use crate::pipeline::hv15::{i2v_bucket, read_rgb, resize_and_crop, Hv15Pipeline};
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
        Ok(BranchEmbeds { text: load(text)?, glyph: glyph.map(load).transpose()?, image: None })
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
    vae: Option<&Vae>,
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
        let vae = loaded_encoder(ctx, vae)?;
        let invalid = |e: String| JobError::Invalid(e);
        let image = load_image(path, params.height, params.width, device).map_err(invalid)?;
        let video = condition_video(expand_timesteps, &image, params).map_err(|e| invalid(e.to_string()))?;
        let moments = encode(vae, &video, vae_group, plan)?;
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

/// The VAE this rank loaded for the image encode (the VAE group's ranks, or rank 0 alone, load
/// its encoder).
fn loaded_encoder<'a>(ctx: &JobCtx, vae: Option<&'a Vae>) -> Result<&'a Vae, JobError> {
    vae.ok_or_else(|| JobError::Invalid(format!("rank {} has no VAE encoder loaded", ctx.rank().0)))
}

/// The image video's latent moments, either family: patch-parallel over the VAE group in the
/// plan's mode (halo slabs, or tiles with the plan's tiling), or on this rank alone.
fn encode(
    vae: &Vae,
    video: &Tensor,
    group: Option<&Arc<dyn Collective>>,
    plan: &ParallelPlan,
) -> Result<Moments, JobError> {
    let tiling = match plan.vae_mode {
        VaeMode::Tiles => Some(Tiling::from(plan.vae_tiling.unwrap_or_default())),
        VaeMode::Halo => None,
    };
    Ok(match group {
        Some(group) => vae.encode_parallel(video, group, plan.vae_mode, tiling.as_ref(), &mut |_| {})?,
        None => vae.encode(video, tiling.as_ref(), &mut |_| {})?,
    })
}

/// The RGB pixels of an HV1.5 I2V image resized into the run's size, which must be the image's
/// bucket (the pipeline renders at the bucket `transformer.config.target_size` picks for the image).
fn hv15_pixels(model: &ModelSpec, path: &Path, params: &GenerateParams) -> Result<Vec<u8>, JobError> {
    let Some(hv) = &model.hv15 else { return Err(JobError::Invalid("not a HunyuanVideo 1.5 model".into())) };
    let invalid = |e: crate::pipeline::hv15::Hv15PipelineError| JobError::Invalid(e.to_string());
    let (rgb, (h, w)) = read_rgb(path).map_err(invalid)?;
    let bucket = i2v_bucket(h, w, hv.transformer.target_size, hv.vae.spatial_compression_ratio).map_err(invalid)?;
    if bucket != (params.height, params.width) {
        return Err(JobError::Invalid(format!(
            "HunyuanVideo 1.5 image-to-video renders a {h}×{w} image at its bucket {}×{} (target_size {}): pass height {} and width {}",
            bucket.0, bucket.1, hv.transformer.target_size, bucket.0, bucket.1
        )));
    }
    Ok(resize_and_crop(&rgb, (h, w), bucket))
}

/// HunyuanVideo 1.5's SigLIP image embeddings `(1, K, image_dim)` on every rank: rank 0 loads the
/// folder's `feature_extractor/` and `image_encoder/` (f32), encodes, drops the encoder and
/// broadcasts (inside the caller's `encode_image` phase).
pub fn hv15_image_embeds(
    ctx: &JobCtx,
    world: &Arc<dyn Collective>,
    model: &ModelSpec,
    path: &Path,
    params: &GenerateParams,
) -> Result<Tensor, JobError> {
    let invalid = |e: siglip::ImageEncoderError| JobError::Invalid(e.to_string());
    let Some(cfg) = model.hv15.as_ref().and_then(|hv| hv.image_encoder.as_ref()) else {
        return Err(JobError::Invalid("not a HunyuanVideo 1.5 image-to-video model (no image_encoder/)".into()));
    };
    let shape = (1, cfg.num_patches(), cfg.hidden_size);
    let mine = if ctx.rank() == Rank(0) {
        let enc = ImageEncoder::load(&model.root, ctx.device()).map_err(invalid)?;
        let px = hv15_pixels(model, path, params)?;
        enc.embeds(&px, (params.height, params.width)).map_err(invalid)?.to_dtype(DType::F32)?
    } else {
        Tensor::zeros(shape, DType::F32, ctx.device())?
    };
    if mine.dims3()? != shape {
        return Err(JobError::Invalid(format!("image embeddings {:?}, expected {shape:?}", mine.dims())));
    }
    Ok(world.broadcast(&mine.contiguous()?, Rank(0))?)
}

/// HunyuanVideo 1.5's image condition `[cond latents, mask]` `(1, z + 1, T, h, w)` on every rank:
/// the VAE group encodes the image (`mode() · scaling_factor`, patch-parallel in the plan's VAE
/// mode, or rank 0 alone), the latent goes to frame 0 with a mask of 1 there, and the world gets
/// rank 0's by broadcast (inside the caller's `encode_image` phase on the encoding ranks).
#[allow(clippy::too_many_arguments)]
pub fn hv15_image_condition(
    ctx: &JobCtx,
    world: &Arc<dyn Collective>,
    vae_group: Option<&Arc<dyn Collective>>,
    plan: &ParallelPlan,
    vae: Option<&Vae>,
    model: &ModelSpec,
    path: &Path,
    params: &GenerateParams,
    latent_shape: &[usize; 5],
) -> Result<Condition, JobError> {
    let device = ctx.device();
    let [_, z, t, h, w] = *latent_shape;
    let encodes = vae_group.is_some() || ctx.rank() == Rank(0);
    let mine = if encodes {
        let vae = loaded_encoder(ctx, vae)?;
        let Vae::Hv15(hv_vae) = vae else { return Err(JobError::Invalid("not a HunyuanVideo 1.5 VAE".into())) };
        let px = hv15_pixels(model, path, params)?;
        let (bh, bw) = (params.height, params.width);
        // `VaeImageProcessor.preprocess`: `2 · (v / 255) − 1` in f32, `[1, 3, 1, H, W]`.
        let data: Vec<f32> = px.iter().map(|v| 2.0 * (*v as f32 / 255.0) - 1.0).collect();
        let video = Tensor::from_vec(data, (bh, bw, 3), device)?.permute((2, 0, 1))?.reshape((1, 3, 1, bh, bw))?;
        let moments = encode(vae, &video.contiguous()?, vae_group, plan)?;
        let latent = (moments.mean * hv_vae.config().scaling_factor)?;
        let latents = Tensor::zeros((1, z, t, h, w), DType::F32, device)?;
        Hv15Pipeline::cond_and_mask(&latents, Some(&latent)).map_err(|e| JobError::Invalid(e.to_string()))?
    } else {
        Tensor::zeros((1, z + 1, t, h, w), DType::F32, device)?
    };
    if mine.dims() != [1, z + 1, t, h, w] {
        return Err(JobError::Invalid(format!(
            "image condition {:?}, expected {:?}",
            mine.dims(),
            [1, z + 1, t, h, w]
        )));
    }
    Ok(Condition::Channels(world.broadcast(&mine.contiguous()?, Rank(0))?))
}
