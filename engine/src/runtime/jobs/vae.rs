//! The VAE jobs: patch-parallel decode and encode on ranks `0..vae_parallel` of the world, in
//! `tiles` or `halo` mode (see `models::wan::vae::parallel` and `models::hv15::vae::parallel`), for
//! either family's VAE (`models::vae`). Ranks outside the VAE group idle.
//! Every finished tile or chunk slab becomes a `VaePiece` event with a small preview; rank 0 writes
//! the output.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use super::{JobCtx, JobError};
use crate::models::vae::{self, Vae};
use crate::models::wan::vae::parallel::DecodedPiece;
use crate::models::wan::vae::{Tiling, VaeParts, VaeProgress};
use crate::parallel::comm::{color_of, Collective, SingleRank};
use crate::parallel::plan::VaeMode;
use crate::parallel::Rank;
use crate::runtime::protocol::{JobOutput, Rgb8Preview, VaeDecodeSpec, VaeEncodeSpec, VaePiece, WorkerEvent};
use crate::tensor_io;

/// Longest side of a piece preview, in pixels.
const PREVIEW_SIDE: usize = 64;

pub fn decode(ctx: &JobCtx, spec: &VaeDecodeSpec) -> Result<JobOutput, JobError> {
    let Some(group) = vae_group(ctx, spec.vae_parallel, spec.mode, spec.tiling)? else {
        return idle(ctx);
    };
    let latents = tensor_io::read_tensor(&spec.latents, "latents", DType::F32, &Device::Cpu)?;
    let model = load(ctx, &spec.model, spec.config.as_deref(), VaeParts::Decoder)?;
    let video = {
        let _decode = ctx.phase("decode");
        let tiling = spec.tiling.map(tiling_of);
        let mut progress = progress_on_root(ctx, "decode");
        let mut on_piece = |p: DecodedPiece<'_>| ctx.emit(WorkerEvent::VaePiece(piece_event(&p)));
        model.decode_parallel(&latents, &group, spec.mode, tiling.as_ref(), &mut progress, &mut on_piece)?
    };
    if let Some(video) = video {
        let _write = ctx.phase("write");
        tensor_io::write_atomic(&spec.out, &[("video", video)])?;
    }
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}

pub fn encode(ctx: &JobCtx, spec: &VaeEncodeSpec) -> Result<JobOutput, JobError> {
    let Some(group) = vae_group(ctx, spec.vae_parallel, spec.mode, spec.tiling)? else {
        return idle(ctx);
    };
    let video = crate::pipeline::image::read_video_or_image(&spec.video).map_err(JobError::Invalid)?;
    let model = load(ctx, &spec.model, spec.config.as_deref(), VaeParts::Encoder)?;
    let moments = {
        let _encode = ctx.phase("encode");
        let tiling = spec.tiling.map(tiling_of);
        let mut progress = progress_on_root(ctx, "encode");
        model.encode_parallel(&video, &group, spec.mode, tiling.as_ref(), &mut progress)?
    };
    if ctx.rank() == Rank(0) {
        let _write = ctx.phase("write");
        tensor_io::write_atomic(&spec.out, &[("mean", moments.mean), ("logvar", moments.logvar)])?;
    }
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}

/// The collective of the VAE ranks, or `None` on a rank outside it. Checks the plan first, on every
/// rank alike, so a bad request fails before anything loads.
fn vae_group(
    ctx: &JobCtx,
    vae_parallel: Option<usize>,
    mode: VaeMode,
    tiling: Option<[usize; 4]>,
) -> Result<Option<Arc<dyn Collective>>, JobError> {
    let world = ctx.world_size();
    let n = vae_parallel.unwrap_or(world);
    if n == 0 || n > world {
        return Err(JobError::Invalid(format!("--vae-parallel {n} must be between 1 and the {world} ranks")));
    }
    if mode == VaeMode::Halo && tiling.is_some() {
        return Err(JobError::Invalid(
            "--mode halo decodes untiled feature slabs (identical to an untiled decode); drop --tiling or use --mode tiles"
                .into(),
        ));
    }
    if n == world {
        return Ok(Some(ctx.comm().clone()));
    }
    // Every rank takes part in the split (NCCL makes the group's communicator collectively).
    let members: Vec<Rank> = (0..n).map(Rank).collect();
    let (color, key) = color_of(&members, ctx.rank());
    if n == 1 {
        // A group of one needs no communicator; the others still wait at the closing barrier.
        return Ok((ctx.rank().0 == 0).then(|| Arc::new(SingleRank) as Arc<dyn Collective>));
    }
    Ok(ctx.comm().split(color, key)?)
}

/// Ranks outside the VAE group wait for the others at the closing barrier.
fn idle(ctx: &JobCtx) -> Result<JobOutput, JobError> {
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}

fn load(ctx: &JobCtx, model: &Path, config: Option<&Path>, parts: VaeParts) -> Result<Vae, JobError> {
    let _load = ctx.phase("load");
    let bytes = if model.is_file() {
        std::fs::metadata(model).map(|m| m.len()).unwrap_or(0)
    } else {
        let dir = crate::weights::component_dir(model, "vae")?;
        crate::weights::Checkpoint::open(&dir)?.stored_bytes()
    };
    ctx.add_weights_bytes(bytes);
    let dtype = match config {
        Some(_) => vae::run_dtype(crate::model_spec::Family::Wan, ctx.device()),
        None => vae::run_dtype(vae::family_of(model).map_err(|e| JobError::Invalid(e.to_string()))?, ctx.device()),
    };
    vae::load_with_config(model, config, parts, dtype, ctx.device()).map_err(|e| JobError::Invalid(e.to_string()))
}

fn tiling_of([h, w, sh, sw]: [usize; 4]) -> Tiling {
    Tiling {
        tile_sample_min_height: h,
        tile_sample_min_width: w,
        tile_sample_stride_height: sh,
        tile_sample_stride_width: sw,
    }
}

/// Progress events from rank 0 only (its count stands for the whole group).
fn progress_on_root<'a>(ctx: &'a JobCtx, what: &'static str) -> impl FnMut(VaeProgress) + 'a {
    move |p: VaeProgress| {
        if ctx.rank().0 == 0 {
            let (i, n) = match p {
                VaeProgress::Chunk { index, total } | VaeProgress::Tile { index, total, .. } => (index, total),
            };
            ctx.progress(i as u64 + 1, n as u64, what);
        }
    }
}

/// A finished piece as the event the engine thread turns into the studio's mosaic.
pub(super) fn piece_event(p: &DecodedPiece<'_>) -> VaePiece {
    let preview = p.preview(PREVIEW_SIDE);
    VaePiece {
        mode: p.mode,
        index: p.index,
        latent_chunk: p.latent_chunk,
        frames: [p.frames.start, p.frames.end],
        pixel_rect: p.pixel_rect(),
        latent_rect: [p.latent_rows.start, p.latent_cols.start, p.latent_rows.len(), p.latent_cols.len()],
        seconds: p.seconds,
        bytes_sent: p.bytes_sent,
        halo_wait_seconds: p.halo_wait_seconds,
        preview: Rgb8Preview { width: preview.width as u32, height: preview.height as u32, rgb: preview.rgb },
    }
}
