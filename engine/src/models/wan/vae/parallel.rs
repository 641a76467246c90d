//! Patch-parallel decode and encode over the ranks of a collective, in either mode:
//! - `tiles` ([`super::tile_parallel`]): whole diffusers tiles per rank, bit-identical to the
//!   single-device tiled decode/encode;
//! - `halo` ([`super::split`]): a row slab of every feature map per rank with halo exchange, equal to
//!   the untiled decode/encode within f32 rounding.
//!
//! Every finished tile or chunk slab is handed to the caller as a [`DecodedPiece`] on the rank that
//! made it (live previews); the assembled video lands on rank 0, encoded latents on every rank.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use super::autoencoder::{copy_piece, patchify, tile_from_frames, to_host_f32, OutputVideo};
use super::blocks::split_moments;
use super::split::CommRowExchange;
use super::tile_parallel::{run_tiles, FinishedTile};
use super::tiling::{TileBuf, TilePlan, Tiling};
use super::{AutoencoderKLWan, Moments, VaeProgress};
use crate::parallel::comm::Collective;
use crate::parallel::plan::VaeMode;
use crate::parallel::Rank;

/// A finished tile (tiles mode) or latent-chunk slab (halo mode) on the rank that decoded it.
pub struct DecodedPiece<'a> {
    pub mode: VaeMode,
    /// Tile index in the row-major plan, or the slab's rank.
    pub index: usize,
    /// Halo mode: the latent chunk; tiles mode: `None` (a tile spans every frame).
    pub latent_chunk: Option<usize>,
    /// Output frames covered.
    pub frames: Range<usize>,
    /// Final output rectangle in *patchified* decoder pixels (multiply by `patch` for video pixels).
    pub out_rows: Range<usize>,
    pub out_cols: Range<usize>,
    /// Latent rectangle it was decoded from (tiles include their overlap).
    pub latent_rows: Range<usize>,
    pub latent_cols: Range<usize>,
    pub patch: usize,
    /// `[frames, C·p², out_rows.len(), out_cols.len()]`, not yet clamped.
    pub data: &'a TileBuf,
    pub seconds: f64,
    pub bytes_sent: u64,
    /// Halo mode: of `seconds`, the time blocked on halo exchanges (0 in tiles mode).
    pub halo_wait_seconds: f64,
}

/// A small RGB8 picture of a piece's first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiecePreview {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl DecodedPiece<'_> {
    /// The piece's rectangle in video pixels: `[y, x, height, width]`.
    pub fn pixel_rect(&self) -> [usize; 4] {
        let p = self.patch;
        [self.out_rows.start * p, self.out_cols.start * p, self.out_rows.len() * p, self.out_cols.len() * p]
    }

    /// First frame, unpatchified, clamped and mapped to 0..=255, nearest-downscaled so the longest
    /// side is at most `max_side`.
    pub fn preview(&self, max_side: usize) -> PiecePreview {
        let p = self.patch;
        let d = self.data;
        let (full_h, full_w) = (d.h * p, d.w * p);
        let scale = full_h.max(full_w).div_ceil(max_side.max(1)).max(1);
        let (height, width) = (full_h.div_ceil(scale), full_w.div_ceil(scale));
        let channels = (d.channels / (p * p)).min(3);
        let mut rgb = vec![0u8; width * height * 3];
        for y in 0..height {
            for x in 0..width {
                let (yy, xx) = (y * scale, x * scale);
                let (ph, pw) = (yy % p, xx % p);
                for c in 0..channels {
                    let v = d.get(0, c * p * p + pw * p + ph, yy / p, xx / p).clamp(-1.0, 1.0);
                    rgb[(y * width + x) * 3 + c] = ((v + 1.0) * 127.5).round() as u8;
                }
            }
        }
        PiecePreview { width, height, rgb }
    }
}

impl AutoencoderKLWan {
    /// Decodes `[B, z, T, h, w]` over the ranks of `comm` (all of them take part; pass a sub-group
    /// for a VAE-parallel size below the world). Returns the video on rank 0, `None` elsewhere.
    /// `tiling` is required-or-default for `tiles` and must be `None` for `halo`.
    pub fn decode_parallel(
        &self,
        z: &Tensor,
        comm: &Arc<dyn Collective>,
        mode: VaeMode,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
        on_piece: &mut dyn FnMut(DecodedPiece<'_>),
    ) -> Result<Option<Tensor>> {
        let (b, _c, t, h, w) = self.check_latents(z)?;
        let cfg = self.config();
        let p = cfg.patch();
        let net = cfg.network_spatial_factor();
        match mode {
            VaeMode::Halo => {
                if tiling.is_some() {
                    candle_core::bail!("halo mode decodes untiled feature slabs; drop the tiling (or use tiles mode)");
                }
                let ex = Arc::new(CommRowExchange::new(comm.clone(), h));
                let rank = comm.rank().0;
                self.decode_halo_slabs(z, ex, progress, &mut |slab| {
                    let Ok(data) = tile_from_frames(slab.data) else { return };
                    let rows = slab.latent_rows.clone();
                    on_piece(DecodedPiece {
                        mode,
                        index: rank,
                        latent_chunk: Some(slab.chunk),
                        frames: slab.frame..slab.frame + data.frames,
                        out_rows: rows.start * net..rows.end * net,
                        out_cols: 0..slab.latent_w * net,
                        latent_rows: rows,
                        latent_cols: 0..slab.latent_w,
                        patch: p,
                        data: &data,
                        seconds: slab.seconds,
                        // Halo rows per conv plus this slab to rank 0 (rank 0 keeps its own).
                        bytes_sent: if rank == 0 { 0 } else { 4 * data.data.len() as u64 },
                        halo_wait_seconds: slab.halo_wait_seconds,
                    });
                })
            }
            VaeMode::Tiles => {
                let tl = tiling.copied().unwrap_or_default();
                tl.validate(cfg.scale_factor_spatial).map_err(candle_core::Error::msg)?;
                if !TilePlan::decode_needs_tiling(&tl, h, w, cfg.scale_factor_spatial) {
                    // Smaller than one tile: diffusers decodes it untiled; one rank does it.
                    return if comm.rank() == Rank(0) {
                        self.decode(z, Some(&tl), progress).map(Some)
                    } else {
                        Ok(None)
                    };
                }
                let (decoder, pq) = self.decoder_parts()?;
                let plan = TilePlan::for_decode(&tl, h, w, cfg.scale_factor_spatial, p);
                let frames = self.decoded_frames(t);
                let mut out = (comm.rank() == Rank(0)).then(|| {
                    OutputVideo::new(b, cfg.out_channels / (p * p), frames, plan.out_h * p, plan.out_w * p, p)
                });
                for bi in 0..b {
                    let zs = z.get(bi)?.transpose(0, 1)?.to_device(self.device())?.to_dtype(self.dtype())?;
                    let mut compute = |_: usize, spec: &super::tiling::TileSpec| {
                        let lat = zs
                            .narrow(2, spec.in_rows.start, spec.in_rows.len())?
                            .narrow(3, spec.in_cols.start, spec.in_cols.len())?
                            .contiguous()?;
                        self.decode_tile(decoder, pq, &lat)
                    };
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
                            patch: p,
                            data: f.piece,
                            seconds: f.seconds,
                            bytes_sent: f.bytes_sent,
                            halo_wait_seconds: 0.0,
                        });
                    };
                    let mut sink = |tile: &TileBuf, spec: &super::tiling::TileSpec| {
                        if let Some(out) = out.as_mut() {
                            out.write_piece(bi, tile, spec);
                        }
                    };
                    run_tiles(&plan, comm.as_ref(), &mut compute, &mut finished, &mut sink)?;
                }
                out.map(OutputVideo::into_tensor).transpose()
            }
        }
    }

    /// Encodes `[B, 3, F, H, W]` over the ranks of `comm`; every rank returns the moments (all of
    /// them need the latents of an input image).
    pub fn encode_parallel(
        &self,
        video: &Tensor,
        comm: &Arc<dyn Collective>,
        mode: VaeMode,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        let (b, f, h, w) = self.check_video(video)?;
        let cfg = self.config();
        let (p, net, z) = (cfg.patch(), cfg.network_spatial_factor(), cfg.z_dim);
        match mode {
            VaeMode::Halo => {
                if tiling.is_some() {
                    candle_core::bail!("halo mode encodes untiled feature slabs; drop the tiling (or use tiles mode)");
                }
                let unit = p * net;
                let ex = Arc::new(CommRowExchange::new(comm.clone(), h / unit));
                self.encode_halo(video, ex, progress)
            }
            VaeMode::Tiles => {
                let tl = tiling.copied().unwrap_or_default();
                tl.validate(net).map_err(candle_core::Error::msg)?;
                if !TilePlan::encode_needs_tiling(&tl, h, w) {
                    let local =
                        if comm.rank() == Rank(0) { Some(self.encode(video, Some(&tl), progress)?) } else { None };
                    return broadcast_moments(comm, local);
                }
                let (encoder, qc) = self.encoder_parts()?;
                let plan = TilePlan::for_encode(&tl, h / p, w / p, net);
                let lat_t = 1 + (f - 1) / 4;
                let (mut means, mut logvars) = (Vec::with_capacity(b), Vec::with_capacity(b));
                for bi in 0..b {
                    let xs = patchify(&video.get(bi)?.to_device(self.device())?.to_dtype(self.dtype())?, p)?;
                    let mut lat = (comm.rank() == Rank(0)).then(|| vec![0f32; lat_t * 2 * z * plan.out_h * plan.out_w]);
                    let mut compute = |_: usize, spec: &super::tiling::TileSpec| {
                        let region = xs
                            .narrow(2, spec.in_rows.start, spec.in_rows.len())?
                            .narrow(3, spec.in_cols.start, spec.in_cols.len())?
                            .contiguous()?;
                        tile_from_frames(&to_host_f32(&self.encode_frames(encoder, qc, &region, &mut |_| {})?)?)
                    };
                    let mut finished = |f: FinishedTile<'_>| {
                        progress(VaeProgress::Tile { index: f.index, total: f.total, spec: f.spec.clone() })
                    };
                    let mut sink = |tile: &TileBuf, spec: &super::tiling::TileSpec| {
                        if let Some(lat) = lat.as_mut() {
                            copy_piece(lat, plan.out_h, plan.out_w, tile, spec);
                        }
                    };
                    run_tiles(&plan, comm.as_ref(), &mut compute, &mut finished, &mut sink)?;
                    // (t, 2z, h, w) on rank 0 → every rank.
                    let shape = (lat_t, 2 * z, plan.out_h, plan.out_w);
                    let local = match lat {
                        Some(lat) => Tensor::from_vec(lat, shape, &Device::Cpu)?,
                        None => Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)?,
                    };
                    let moments = comm.broadcast(&local, Rank(0))?.transpose(0, 1)?.contiguous()?;
                    let (mean, logvar) = split_moments(&moments, z, 0)?;
                    means.push(mean);
                    logvars.push(logvar);
                }
                Ok(Moments { mean: Tensor::stack(&means, 0)?, logvar: Tensor::stack(&logvars, 0)? })
            }
        }
    }
}

/// Sends rank 0's moments to every rank of `comm` (shape first: the others do not know it).
fn broadcast_moments(comm: &Arc<dyn Collective>, local: Option<Moments>) -> Result<Moments> {
    let dims: Vec<u32> = match &local {
        Some(m) => m.mean.dims().iter().map(|d| *d as u32).collect(),
        None => vec![0; 5],
    };
    let dims = comm.broadcast(&Tensor::new(dims.as_slice(), &Device::Cpu)?, Rank(0))?.to_vec1::<u32>()?;
    let shape: Vec<usize> = dims.iter().map(|d| *d as usize).collect();
    let (mean, logvar) = match local {
        Some(m) => (m.mean, m.logvar),
        None => {
            let zeros = Tensor::zeros(shape.as_slice(), candle_core::DType::F32, &Device::Cpu)?;
            (zeros.clone(), zeros)
        }
    };
    Ok(Moments { mean: comm.broadcast(&mean, Rank(0))?, logvar: comm.broadcast(&logvar, Rank(0))? })
}
