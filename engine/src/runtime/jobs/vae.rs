//! The VAE decode job. Without tiling and with more than one rank it runs the `halo` patch-parallel
//! mode: each rank decodes a row slab of every frame with halo exchange over the world's collective,
//! and rank 0 assembles and writes the video. A tiled decode runs on rank 0 (tiles-mode distribution
//! across ranks is the VAE-parallel issue's).

use std::sync::Arc;

use candle_core::{DType, Device};

use super::{JobCtx, JobError};
use crate::models::wan::vae::split::{CommRowExchange, RowExchange};
use crate::models::wan::vae::{self, Tiling, VaeParts, VaeProgress};
use crate::runtime::protocol::{JobOutput, VaeDecodeSpec};
use crate::tensor_io;

pub fn decode(ctx: &JobCtx, spec: &VaeDecodeSpec) -> Result<JobOutput, JobError> {
    let latents = tensor_io::read_tensor(&spec.latents, "latents", DType::F32, &Device::Cpu)?;
    let model = {
        let _load = ctx.phase("load");
        let dir = crate::weights::component_dir(&spec.model, "vae")?;
        ctx.add_weights_bytes(crate::weights::Checkpoint::open(&dir)?.stored_bytes());
        vae::load(&spec.model, VaeParts::Decoder, DType::F32, ctx.device())
            .map_err(|e| JobError::Invalid(e.to_string()))?
    };
    let _decode = ctx.phase("decode");
    let mut progress = |p: VaeProgress| {
        if ctx.rank().0 == 0 {
            let (i, n) = match p {
                VaeProgress::Chunk { index, total } | VaeProgress::Tile { index, total, .. } => (index, total),
            };
            ctx.progress(i as u64 + 1, n as u64, "decode");
        }
    };
    let video = match spec.tiling {
        None if ctx.world_size() > 1 => {
            let latent_h = latents.dim(3)?;
            let ex: Arc<dyn RowExchange> = Arc::new(CommRowExchange::new(ctx.comm().clone(), latent_h));
            model.decode_halo(&latents, ex, &mut progress)?
        }
        tiling => {
            let tiling = tiling.map(|[h, w, sh, sw]| Tiling {
                tile_sample_min_height: h,
                tile_sample_min_width: w,
                tile_sample_stride_height: sh,
                tile_sample_stride_width: sw,
            });
            if ctx.rank().0 == 0 {
                Some(model.decode(&latents, tiling.as_ref(), &mut progress)?)
            } else {
                None
            }
        }
    };
    if let Some(video) = video {
        tensor_io::write_atomic(&spec.out, &[("video", video)])?;
    }
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}
