//! Patch-parallel decode and encode of the HV1.5 VAE over the ranks of a collective, in either mode:
//! - `tiles`: diffusers' tile plan in balanced contiguous runs per rank (the Wan VAE's
//!   [`run_tiles`]), bit-identical to the single-device tiled decode/encode;
//! - `halo`: a row slab of every feature map per rank, streamed chunk by chunk; each conv fetches
//!   one row from each neighbour (replicate only at the frame's global top/bottom), the mid
//!   attention gathers every slab's keys/values. Equal to the untiled decode/encode within f32
//!   rounding (the same taps; only the attention's matmul blocking differs).
//!
//! Every finished tile or chunk slab is handed to the caller as a [`DecodedPiece`] on the rank that
//! made it (live previews); the video lands on rank 0, encoded moments on every rank (image-to-video
//! needs the latents of its image everywhere).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};

use super::autoencoder::{copy_piece, split_moments, tile_from_frames, to_host_f32, VideoBuf};
use super::layers::Rows;
use super::{AutoencoderKLHunyuanVideo15, Chunking};
use crate::models::wan::vae::parallel::DecodedPiece;
use crate::models::wan::vae::split::{split_rows, CommRowExchange, RowExchange};
use crate::models::wan::vae::tile_parallel::{run_tiles, FinishedTile};
use crate::models::wan::vae::tiling::{TileBuf, TilePlan, TileSpec, Tiling};
use crate::models::wan::vae::{Moments, VaeProgress};
use crate::parallel::comm::Collective;
use crate::parallel::plan::VaeMode;
use crate::parallel::Rank;

impl AutoencoderKLHunyuanVideo15 {
    /// Decodes `[B, z, T, h, w]` over the ranks of `comm` (all of them take part; pass a sub-group
    /// for fewer). Returns the video on rank 0, `None` elsewhere. `tiling` is optional (default
    /// tiles) for `tiles` and must be `None` for `halo`.
    pub fn decode_parallel(
        &self,
        z: &Tensor,
        comm: &Arc<dyn Collective>,
        mode: VaeMode,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
        on_piece: &mut dyn FnMut(DecodedPiece<'_>),
    ) -> Result<Option<Tensor>> {
        let (b, t, h, w) = self.check_latents(z)?;
        let s = self.spatial();
        let rank = comm.rank().0;
        let frames = self.config().decoded_frames(t);
        let mut out = (rank == 0).then(|| VideoBuf::new(b, self.config().out_channels, frames, h * s, w * s));
        match mode {
            VaeMode::Halo => {
                if tiling.is_some() {
                    candle_core::bail!("halo mode decodes untiled feature slabs; drop the tiling (or use tiles mode)");
                }
                let ex = halo_exchange(comm, h)?;
                let rows = split_rows(h, comm.world_size())[rank].clone();
                for bi in 0..b {
                    let zs = self.frames_of(z, bi)?.narrow(2, rows.start, rows.len())?.contiguous()?;
                    let mut started = Instant::now();
                    let mut waited = ex.wait_seconds();
                    self.decode_frames(
                        &zs,
                        Rows::Slab(ex.as_ref()),
                        Chunking::Stream,
                        &mut |chunk, total, frame, ys| {
                            let ys = to_host_f32(&ys)?;
                            let data = tile_from_frames(&ys)?;
                            on_piece(DecodedPiece {
                                mode,
                                index: rank,
                                latent_chunk: Some(chunk),
                                frames: frame..frame + data.frames,
                                out_rows: rows.start * s..rows.end * s,
                                out_cols: 0..w * s,
                                latent_rows: rows.clone(),
                                latent_cols: 0..w,
                                patch: 1,
                                data: &data,
                                seconds: started.elapsed().as_secs_f64(),
                                bytes_sent: if rank == 0 { 0 } else { 4 * data.data.len() as u64 },
                                halo_wait_seconds: ex.wait_seconds() - waited,
                            });
                            if let (Some(video), Some(all)) = (out.as_mut(), ex.gather_to_root(&ys, 2)?) {
                                video.write_frames(bi, frame, &all)?;
                            }
                            progress(VaeProgress::Chunk { index: chunk, total });
                            started = Instant::now();
                            waited = ex.wait_seconds();
                            Ok(())
                        },
                    )?;
                }
            }
            VaeMode::Tiles => {
                let tl = tiling.copied().unwrap_or_default();
                tl.validate(s).map_err(candle_core::Error::msg)?;
                if !TilePlan::decode_needs_tiling(&tl, h, w, s) {
                    // Smaller than one tile: diffusers decodes it untiled; one rank does it.
                    return if rank == 0 { self.decode(z, Some(&tl), progress).map(Some) } else { Ok(None) };
                }
                let plan = TilePlan::for_decode(&tl, h, w, s, 1);
                for bi in 0..b {
                    let zs = self.frames_of(z, bi)?;
                    let mut compute = |_: usize, spec: &TileSpec| self.decode_tile(&zs, spec, Chunking::Stream);
                    let mut finished = |f: FinishedTile<'_>| {
                        progress(VaeProgress::Tile { index: f.index, total: f.total, spec: f.spec.clone() });
                        on_piece(DecodedPiece {
                            mode,
                            index: f.index,
                            latent_chunk: None,
                            frames: 0..f.piece.frames,
                            out_rows: f.spec.out_rows.clone(),
                            out_cols: f.spec.out_cols.clone(),
                            latent_rows: f.spec.in_rows.clone(),
                            latent_cols: f.spec.in_cols.clone(),
                            patch: 1,
                            data: f.piece,
                            seconds: f.seconds,
                            bytes_sent: f.bytes_sent,
                            halo_wait_seconds: 0.0,
                        });
                    };
                    let mut sink = |tile: &TileBuf, spec: &TileSpec| {
                        if let Some(video) = out.as_mut() {
                            video.write_piece(bi, tile, spec);
                        }
                    };
                    run_tiles(&plan, comm.as_ref(), &mut compute, &mut finished, &mut sink)?;
                }
            }
        }
        out.map(VideoBuf::into_tensor).transpose()
    }

    /// Encodes `[B, 3, F, H, W]` over the ranks of `comm`; every rank returns the moments.
    pub fn encode_parallel(
        &self,
        video: &Tensor,
        comm: &Arc<dyn Collective>,
        mode: VaeMode,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        let (b, f, h, w) = self.check_video(video)?;
        let s = self.spatial();
        let z = self.config().latent_channels;
        let lat_t = 1 + (f - 1) / self.config().temporal_compression_ratio;
        let (mut means, mut logvars) = (Vec::with_capacity(b), Vec::with_capacity(b));
        match mode {
            VaeMode::Halo => {
                if tiling.is_some() {
                    candle_core::bail!("halo mode encodes untiled feature slabs; drop the tiling (or use tiles mode)");
                }
                let ex = halo_exchange(comm, h / s)?;
                let rows = split_rows(h / s, comm.world_size())[comm.rank().0].clone();
                for bi in 0..b {
                    let xs = self.frames_of(video, bi)?.narrow(2, rows.start * s, rows.len() * s)?.contiguous()?;
                    let local = to_host_f32(&self.encode_frames(&xs, Rows::Slab(ex.as_ref()), Chunking::Stream)?)?;
                    let moments = ex.all_gather(&local, 2)?;
                    progress(VaeProgress::Chunk { index: bi, total: b });
                    let (mean, logvar) = split_moments(&moments, z)?;
                    means.push(mean);
                    logvars.push(logvar);
                }
            }
            VaeMode::Tiles => {
                let tl = tiling.copied().unwrap_or_default();
                tl.validate(s).map_err(candle_core::Error::msg)?;
                let (lh, lw) = (h / s, w / s);
                let shape = (lat_t, 2 * z, lh, lw);
                let needs_tiling = TilePlan::encode_needs_tiling(&tl, h, w);
                let plan = TilePlan::for_encode(&tl, h, w, s);
                for bi in 0..b {
                    let xs = self.frames_of(video, bi)?;
                    let mut lat = (comm.rank() == Rank(0)).then(|| vec![0f32; lat_t * 2 * z * lh * lw]);
                    if !needs_tiling {
                        // Smaller than one tile: diffusers encodes it untiled; rank 0 does it.
                        if let Some(lat) = lat.as_mut() {
                            let m = to_host_f32(&self.encode_frames(&xs, Rows::Whole, Chunking::Stream)?)?;
                            lat.copy_from_slice(&m.flatten_all()?.to_vec1::<f32>()?);
                        }
                    } else {
                        let mut compute = |_: usize, spec: &TileSpec| self.encode_tile(&xs, spec, Chunking::Stream);
                        let mut finished = |f: FinishedTile<'_>| {
                            progress(VaeProgress::Tile { index: f.index, total: f.total, spec: f.spec.clone() })
                        };
                        let mut sink = |tile: &TileBuf, spec: &TileSpec| {
                            if let Some(lat) = lat.as_mut() {
                                copy_piece(lat, lh, lw, tile, spec);
                            }
                        };
                        run_tiles(&plan, comm.as_ref(), &mut compute, &mut finished, &mut sink)?;
                    }
                    // (t, 2z, h, w) on rank 0 → every rank.
                    let local = match lat {
                        Some(lat) => Tensor::from_vec(lat, shape, &Device::Cpu)?,
                        None => Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                    };
                    let moments = comm.broadcast(&local, Rank(0))?;
                    let (mean, logvar) = split_moments(&moments, z)?;
                    means.push(mean);
                    logvars.push(logvar);
                }
            }
        }
        Ok(Moments { mean: Tensor::stack(&means, 0)?, logvar: Tensor::stack(&logvars, 0)? })
    }
}

/// The row exchange of halo mode over `latent_h` latent rows; every rank needs at least one row.
fn halo_exchange(comm: &Arc<dyn Collective>, latent_h: usize) -> Result<Arc<dyn RowExchange>> {
    let world = comm.world_size();
    if latent_h < world {
        candle_core::bail!(
            "halo mode gives every rank at least one latent row: {latent_h} latent rows, so use at most {latent_h} ranks (or tiles mode)"
        );
    }
    Ok(Arc::new(CommRowExchange::new(comm.clone(), latent_h)))
}
