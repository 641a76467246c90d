//! `AutoencoderKLHunyuanVideo15`: decode and encode, untiled (streamed chunk by chunk, equal to the
//! whole-clip forward) or with diffusers' spatial tiling (`enable_tiling`, exactly its blend/crop).
//!
//! Public tensors use diffusers' `[B, C, T, H, W]`; internally each video is `[T, C, H, W]`.
//! Streaming: a decode runs one latent frame per chunk (latent frame 0 → 1 video frame, every later
//! one → 4), an encode 1 then 4 video frames per chunk; the causal convs keep two frames and the mid
//! attention its keys/values between chunks, so the result is the whole-clip forward's.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Config;
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::layers::{Caches, Rows};
use crate::models::wan::vae::tiling::{TileAssembler, TileBuf, TilePlan, TileSpec, Tiling};
use crate::models::wan::vae::{Moments, VaeParts, VaeProgress};

/// How many frames each pass of an untiled decode/encode takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// All frames at once: diffusers' forward (memory grows with the clip).
    Whole,
    /// One latent frame per decode chunk, 1 then 4 video frames per encode chunk (bounded memory).
    Stream,
}

#[derive(Debug, Clone)]
pub struct AutoencoderKLHunyuanVideo15 {
    cfg: Config,
    encoder: Option<Encoder>,
    decoder: Option<Decoder>,
    device: Device,
    dtype: DType,
}

impl AutoencoderKLHunyuanVideo15 {
    pub fn new(cfg: &Config, parts: VaeParts, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let encoder = (parts != VaeParts::Decoder).then(|| Encoder::new(cfg, vb.pp("encoder"))).transpose()?;
        let decoder = (parts != VaeParts::Encoder).then(|| Decoder::new(cfg, vb.pp("decoder"))).transpose()?;
        Ok(Self { cfg: cfg.clone(), encoder, decoder, device: vb.device().clone(), dtype: vb.dtype() })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn decoder(&self) -> Result<&Decoder> {
        self.decoder.as_ref().ok_or_else(|| candle_core::Error::msg("this VAE was loaded without its decoder"))
    }

    pub fn encoder(&self) -> Result<&Encoder> {
        self.encoder.as_ref().ok_or_else(|| candle_core::Error::msg("this VAE was loaded without its encoder"))
    }

    /// Spatial factor (video pixels per latent pixel).
    pub fn spatial(&self) -> usize {
        self.cfg.spatial_compression_ratio
    }

    pub(super) fn check_latents(&self, z: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = z.dims();
        let [b, c, t, h, w] = dims[..] else {
            candle_core::bail!("latents must be 5-D [B, C, T, H, W], got {dims:?}");
        };
        if c != self.cfg.latent_channels {
            candle_core::bail!(
                "latents have {c} channels but this VAE expects latent_channels = {} (shape {dims:?}); is this the right model?",
                self.cfg.latent_channels
            );
        }
        if b == 0 || t == 0 || h == 0 || w == 0 {
            candle_core::bail!("latents shape {dims:?} has an empty dimension");
        }
        Ok((b, t, h, w))
    }

    pub(super) fn check_video(&self, video: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = video.dims();
        let [b, c, f, h, w] = dims[..] else {
            candle_core::bail!("video must be 5-D [B, 3, F, H, W], got {dims:?}");
        };
        let (s, tc) = (self.spatial(), self.cfg.temporal_compression_ratio);
        if c != self.cfg.in_channels {
            candle_core::bail!("video has {c} channels, this VAE encodes {}", self.cfg.in_channels);
        }
        if b == 0 || f == 0 || (f - 1) % tc != 0 {
            candle_core::bail!("video frames must be 1 + {tc}·k, got {f} (shape {dims:?})");
        }
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 {
            candle_core::bail!("video height and width must be positive multiples of {s}, got {h}x{w}");
        }
        Ok((b, f, h, w))
    }

    /// Latent frames per decode chunk and video frames per encode chunk (after the first).
    fn chunk_frames(&self, chunking: Chunking, total: usize, encode: bool) -> usize {
        match (chunking, encode) {
            (Chunking::Whole, _) => total,
            (Chunking::Stream, false) => 1,
            (Chunking::Stream, true) => self.cfg.temporal_compression_ratio,
        }
    }

    /// Runs the decoder over `zs` `[T, z, h, w]` chunk by chunk; `on_chunk(index, chunks, first
    /// output frame, frames)` gets each chunk's `[F, 3, H, W]`.
    pub(super) fn decode_frames(
        &self,
        zs: &Tensor,
        rows: Rows<'_>,
        chunking: Chunking,
        on_chunk: &mut dyn FnMut(usize, usize, usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let decoder = self.decoder()?;
        let t = zs.dim(0)?;
        let per = self.chunk_frames(chunking, t, false);
        // Latent frame 0 alone first (it decodes to one frame), then `per` frames per chunk.
        let mut bounds = vec![(0, if chunking == Chunking::Whole { t } else { 1 })];
        let mut start = bounds[0].1;
        while start < t {
            let len = per.min(t - start);
            bounds.push((start, len));
            start += len;
        }
        let mut caches = Caches::new();
        for (i, &(s, len)) in bounds.iter().enumerate() {
            let out = decoder.forward(&zs.narrow(0, s, len)?, &mut caches, rows)?;
            let frame = if s == 0 { 0 } else { self.cfg.decoded_frames(s) };
            on_chunk(i, bounds.len(), frame, out)?;
        }
        Ok(())
    }

    /// Runs the encoder over `xs` `[F, 3, H, W]` chunk by chunk → moments `[T, 2z, h, w]`.
    pub(super) fn encode_frames(&self, xs: &Tensor, rows: Rows<'_>, chunking: Chunking) -> Result<Tensor> {
        let encoder = self.encoder()?;
        let f = xs.dim(0)?;
        let per = self.chunk_frames(chunking, f, true);
        let mut caches = Caches::new();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < f {
            let len = if start == 0 && chunking == Chunking::Stream { 1 } else { per.min(f - start) };
            outs.push(encoder.forward(&xs.narrow(0, start, len)?, &mut caches, rows)?);
            start += len;
        }
        Tensor::cat(&outs, 0)
    }

    /// `vae.decode(z).sample`: `[B, z, T, h, w]` → `[B, 3, F, H, W]` f32 on the host (not clamped).
    pub fn decode(&self, z: &Tensor, tiling: Option<&Tiling>, progress: &mut dyn FnMut(VaeProgress)) -> Result<Tensor> {
        self.decode_with(z, tiling, Chunking::Stream, progress)
    }

    /// [`Self::decode`] with the untiled pass's chunking chosen (tests compare the two).
    pub fn decode_with(
        &self,
        z: &Tensor,
        tiling: Option<&Tiling>,
        chunking: Chunking,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Tensor> {
        let (b, t, h, w) = self.check_latents(z)?;
        let s = self.spatial();
        let frames = self.cfg.decoded_frames(t);
        let mut out = VideoBuf::new(b, self.cfg.out_channels, frames, h * s, w * s);
        for bi in 0..b {
            let zs = self.frames_of(z, bi)?;
            match tiling {
                Some(tl) if TilePlan::decode_needs_tiling(tl, h, w, s) => {
                    tl.validate(s).map_err(candle_core::Error::msg)?;
                    let plan = TilePlan::for_decode(tl, h, w, s, 1);
                    let mut asm = TileAssembler::new(&plan);
                    let total = plan.rows() * plan.cols();
                    for (index, spec) in plan.tiles().iter().enumerate() {
                        let tile = self.decode_tile(&zs, spec, chunking)?;
                        asm.push(tile, |piece, spec| out.write_piece(bi, piece, spec));
                        progress(VaeProgress::Tile { index, total, spec: spec.clone() });
                    }
                }
                _ => self.decode_frames(&zs, Rows::Whole, chunking, &mut |index, total, frame, ys| {
                    out.write_frames(bi, frame, &to_host_f32(&ys)?)?;
                    progress(VaeProgress::Chunk { index, total });
                    Ok(())
                })?,
            }
        }
        out.into_tensor()
    }

    /// One decode tile (whole clip, the tile's latent rectangle) as a host buffer.
    pub(super) fn decode_tile(&self, zs: &Tensor, spec: &TileSpec, chunking: Chunking) -> Result<TileBuf> {
        let lat = zs
            .narrow(2, spec.in_rows.start, spec.in_rows.len())?
            .narrow(3, spec.in_cols.start, spec.in_cols.len())?
            .contiguous()?;
        let mut parts = Vec::new();
        self.decode_frames(&lat, Rows::Whole, chunking, &mut |_, _, _, ys| {
            parts.push(to_host_f32(&ys)?);
            Ok(())
        })?;
        tile_from_frames(&Tensor::cat(&parts, 0)?)
    }

    /// Sample `bi` of `[B, C, T, H, W]` as frames-major `[T, C, H, W]` on the model's device/dtype.
    pub(super) fn frames_of(&self, x: &Tensor, bi: usize) -> Result<Tensor> {
        x.get(bi)?.transpose(0, 1)?.to_device(&self.device)?.to_dtype(self.dtype)?.contiguous()
    }

    /// `vae.encode(video).latent_dist` (mean and clamped log-variance), `[B, z, T, h, w]` f32.
    pub fn encode(
        &self,
        video: &Tensor,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        self.encode_with(video, tiling, Chunking::Stream, progress)
    }

    /// [`Self::encode`] with the untiled pass's chunking chosen.
    pub fn encode_with(
        &self,
        video: &Tensor,
        tiling: Option<&Tiling>,
        chunking: Chunking,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        let (b, _f, h, w) = self.check_video(video)?;
        let s = self.spatial();
        let (mut means, mut logvars) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for bi in 0..b {
            let xs = self.frames_of(video, bi)?;
            let moments = match tiling {
                Some(tl) if TilePlan::encode_needs_tiling(tl, h, w) => {
                    tl.validate(s).map_err(candle_core::Error::msg)?;
                    let plan = TilePlan::for_encode(tl, h, w, s);
                    let mut asm = TileAssembler::new(&plan);
                    let total = plan.rows() * plan.cols();
                    let mut buf: Option<(Vec<f32>, [usize; 2])> = None;
                    for (index, spec) in plan.tiles().iter().enumerate() {
                        let tile = self.encode_tile(&xs, spec, chunking)?;
                        let (lat, _) = buf.get_or_insert_with(|| {
                            (
                                vec![0f32; tile.frames * tile.channels * plan.out_h * plan.out_w],
                                [tile.frames, tile.channels],
                            )
                        });
                        asm.push(tile, |piece, spec| copy_piece(lat, plan.out_h, plan.out_w, piece, spec));
                        progress(VaeProgress::Tile { index, total, spec: spec.clone() });
                    }
                    let Some((lat, [t, c])) = buf else { candle_core::bail!("tiled encode produced no tiles") };
                    Tensor::from_vec(lat, (t, c, plan.out_h, plan.out_w), &Device::Cpu)?
                }
                _ => {
                    let m = to_host_f32(&self.encode_frames(&xs, Rows::Whole, chunking)?)?;
                    progress(VaeProgress::Chunk { index: 0, total: 1 });
                    m
                }
            };
            let (mean, logvar) = split_moments(&moments, self.cfg.latent_channels)?;
            means.push(mean);
            logvars.push(logvar);
        }
        Ok(Moments { mean: Tensor::stack(&means, 0)?, logvar: Tensor::stack(&logvars, 0)? })
    }

    /// One encode tile (all frames of the tile's pixel rectangle) as a host buffer of moments.
    pub(super) fn encode_tile(&self, xs: &Tensor, spec: &TileSpec, chunking: Chunking) -> Result<TileBuf> {
        let region = xs
            .narrow(2, spec.in_rows.start, spec.in_rows.len())?
            .narrow(3, spec.in_cols.start, spec.in_cols.len())?
            .contiguous()?;
        tile_from_frames(&to_host_f32(&self.encode_frames(&region, Rows::Whole, chunking)?)?)
    }
}

/// Moments `[T, 2z, h, w]` → (mean, logvar clamped to [-30, 20]) as `[z, T, h, w]`
/// (`DiagonalGaussianDistribution`).
pub(super) fn split_moments(moments: &Tensor, z: usize) -> Result<(Tensor, Tensor)> {
    let mean = moments.narrow(1, 0, z)?.transpose(0, 1)?.contiguous()?;
    let logvar = moments.narrow(1, z, z)?.clamp(-30f32, 20f32)?.transpose(0, 1)?.contiguous()?;
    Ok((mean, logvar))
}

pub(super) fn to_host_f32(xs: &Tensor) -> Result<Tensor> {
    xs.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()
}

pub(super) fn tile_from_frames(xs: &Tensor) -> Result<TileBuf> {
    let (frames, channels, h, w) = xs.dims4()?;
    Ok(TileBuf { data: xs.flatten_all()?.to_vec1::<f32>()?, frames, channels, h, w })
}

/// Copies a tile piece into a frames-major host buffer `[T, C, out_h, out_w]`.
pub(super) fn copy_piece(dst: &mut [f32], out_h: usize, out_w: usize, tile: &TileBuf, spec: &TileSpec) {
    for f in 0..tile.frames {
        for c in 0..tile.channels {
            for (dy, y) in spec.out_rows.clone().enumerate() {
                let row = ((f * tile.channels + c) * out_h + y) * out_w;
                let src = (f * tile.channels + c) * tile.h * tile.w + dy * tile.w;
                dst[row + spec.out_cols.start..row + spec.out_cols.end]
                    .copy_from_slice(&tile.data[src..src + spec.out_cols.len()]);
            }
        }
    }
}

/// The preallocated decode result `[B, C, F, H, W]` (host f32), filled chunk by chunk or piece by
/// piece, so the output never exists twice.
pub(super) struct VideoBuf {
    data: Vec<f32>,
    dims: [usize; 5],
}

impl VideoBuf {
    pub(super) fn new(b: usize, c: usize, f: usize, h: usize, w: usize) -> Self {
        Self { data: vec![0f32; b * c * f * h * w], dims: [b, c, f, h, w] }
    }

    /// Frames `[n, C, rows, W]` starting at `frame`, rows from `row0`.
    pub(super) fn write_rows(&mut self, b: usize, frame: usize, row0: usize, ys: &Tensor) -> Result<()> {
        let [_, c_n, f_n, h_n, w_n] = self.dims;
        let (n, c, rows, w) = ys.dims4()?;
        if c != c_n || w != w_n || frame + n > f_n || row0 + rows > h_n {
            candle_core::bail!(
                "decoded frames {:?} at frame {frame}, row {row0} do not fit the video {:?}",
                ys.dims(),
                self.dims
            );
        }
        let data = ys.flatten_all()?.to_vec1::<f32>()?;
        for t in 0..n {
            for ch in 0..c {
                let src = (t * c + ch) * rows * w;
                let dst = (((b * c_n + ch) * f_n + frame + t) * h_n + row0) * w_n;
                self.data[dst..dst + rows * w].copy_from_slice(&data[src..src + rows * w]);
            }
        }
        Ok(())
    }

    pub(super) fn write_frames(&mut self, b: usize, frame: usize, ys: &Tensor) -> Result<()> {
        self.write_rows(b, frame, 0, ys)
    }

    /// A blended tile's cropped piece at `spec.out_rows × spec.out_cols` of every frame.
    pub(super) fn write_piece(&mut self, b: usize, tile: &TileBuf, spec: &TileSpec) {
        let [_, c_n, f_n, h_n, w_n] = self.dims;
        for f in 0..tile.frames {
            for c in 0..tile.channels {
                for (dy, y) in spec.out_rows.clone().enumerate() {
                    let dst = (((b * c_n + c) * f_n + f) * h_n + y) * w_n;
                    let src = (f * tile.channels + c) * tile.h * tile.w + dy * tile.w;
                    self.data[dst + spec.out_cols.start..dst + spec.out_cols.end]
                        .copy_from_slice(&tile.data[src..src + spec.out_cols.len()]);
                }
            }
        }
    }

    pub(super) fn into_tensor(self) -> Result<Tensor> {
        Tensor::from_vec(self.data, &self.dims[..], &Device::Cpu)
    }
}
