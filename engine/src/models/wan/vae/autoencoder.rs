//! `AutoencoderKLWan`: the public decode/encode API over encoder, decoder and the 1×1×1 quant convs,
//! with diffusers' temporal chunking, optional spatial tiling, (un)patchify and the output clamp.
//!
//! Public tensors use diffusers' `[B, C, T, H, W]`; internally each video is `[T, C, H, W]`. Decoded
//! frames are written straight into one preallocated host buffer as each chunk finishes (unpatchify
//! and clamp fused into that copy), so the output never exists twice.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::split_moments;
use super::cache::FeatCache;
use super::config::Config;
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::layers::CausalConv3d;
use super::split::{split_rows, RowExchange};
use super::tiling::{TileAssembler, TileBuf, TilePlan, TileSpec, Tiling};

/// Which halves of the VAE to load: decoding never needs the encoder's weights and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeParts {
    Both,
    Encoder,
    Decoder,
}

/// Progress of a long decode or encode, for logs and progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeProgress {
    /// A temporal chunk of an untiled pass finished.
    Chunk { index: usize, total: usize },
    /// A tile finished (all its frames).
    Tile { index: usize, total: usize, spec: TileSpec },
}

/// A finished latent chunk of this rank's row slab in halo mode (for live previews).
pub struct HaloSlab<'a> {
    pub batch: usize,
    pub chunk: usize,
    pub chunks: usize,
    /// First output frame of the chunk.
    pub frame: usize,
    /// The latent rows this rank owns, and the latent width.
    pub latent_rows: std::ops::Range<usize>,
    pub latent_w: usize,
    /// `[frames, C·p², rows, W/p]` decoder output (patchified, not clamped), host f32.
    pub data: &'a Tensor,
    pub seconds: f64,
    /// Of `seconds`, the time this rank was blocked on halo exchanges (the part the interior rows'
    /// compute did not hide).
    pub halo_wait_seconds: f64,
}

/// Encoder output: the diagonal Gaussian's mean and log-variance, `[B, z, T, h, w]` f32.
#[derive(Debug, Clone)]
pub struct Moments {
    pub mean: Tensor,
    pub logvar: Tensor,
}

#[derive(Debug, Clone)]
pub struct AutoencoderKLWan {
    cfg: Config,
    encoder: Option<Encoder>,
    quant_conv: Option<CausalConv3d>,
    decoder: Option<Decoder>,
    post_quant_conv: Option<CausalConv3d>,
    device: Device,
    dtype: DType,
}

impl AutoencoderKLWan {
    pub fn new(cfg: &Config, parts: VaeParts, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let z = cfg.z_dim;
        let (encoder, quant_conv) = if parts != VaeParts::Decoder {
            (
                Some(Encoder::new(cfg, vb.pp("encoder"))?),
                Some(CausalConv3d::new(2 * z, 2 * z, 1, 1, 0, vb.pp("quant_conv"))?),
            )
        } else {
            (None, None)
        };
        let (decoder, post_quant_conv) = if parts != VaeParts::Encoder {
            (
                Some(Decoder::new(cfg, vb.pp("decoder"))?),
                Some(CausalConv3d::new(z, z, 1, 1, 0, vb.pp("post_quant_conv"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            quant_conv,
            decoder,
            post_quant_conv,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device and dtype the weights were loaded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Output frames for `latent_frames` latent frames: 1 + 4·(T − 1) for the Wan VAEs.
    pub fn decoded_frames(&self, latent_frames: usize) -> usize {
        let up = 1usize << self.cfg.temperal_downsample.iter().filter(|&&t| t).count();
        1 + up * latent_frames.saturating_sub(1)
    }

    pub(super) fn check_latents(&self, z: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
        let dims = z.dims();
        let [b, c, t, h, w] = dims[..] else {
            candle_core::bail!("latents must be 5-D [B, C, T, H, W], got {dims:?}");
        };
        if c != self.cfg.z_dim {
            candle_core::bail!(
                "latents have {c} channels but this VAE expects z_dim = {} (shape {dims:?}); is this the right model?",
                self.cfg.z_dim
            );
        }
        if b == 0 || t == 0 || h == 0 || w == 0 {
            candle_core::bail!("latents shape {dims:?} has an empty dimension");
        }
        Ok((b, c, t, h, w))
    }

    /// `vae.decode(z).sample`: `[B, z, T, h, w]` → `[B, 3, F, H, W]` f32 on the host, in [-1, 1].
    pub fn decode(&self, z: &Tensor, tiling: Option<&Tiling>, progress: &mut dyn FnMut(VaeProgress)) -> Result<Tensor> {
        let (b, _c, t, h, w) = self.check_latents(z)?;
        if let Some(tl) = tiling {
            tl.validate(self.cfg.scale_factor_spatial).map_err(candle_core::Error::msg)?;
        }
        let (decoder, pq) = match (&self.decoder, &self.post_quant_conv) {
            (Some(d), Some(p)) => (d, p),
            _ => candle_core::bail!("this VAE was loaded without its decoder"),
        };
        let spatial = self.cfg.scale_factor_spatial;
        let p = self.cfg.patch();
        let net = self.cfg.network_spatial_factor();
        let frames = self.decoded_frames(t);
        let out_c = self.cfg.out_channels / (p * p);
        let (out_h, out_w) = (h * net * p, w * net * p);
        let mut out = OutputVideo::new(b, out_c, frames, out_h, out_w, p);
        for bi in 0..b {
            // (z, t, h, w) -> (t, z, h, w): frames-major for the chunk loop.
            let zs = z.get(bi)?.transpose(0, 1)?.to_device(&self.device)?.to_dtype(self.dtype)?.contiguous()?;
            match tiling {
                Some(tl) if TilePlan::decode_needs_tiling(tl, h, w, spatial) => {
                    let plan = TilePlan::for_decode(tl, h, w, spatial, p);
                    let total = plan.rows() * plan.cols();
                    let mut asm = TileAssembler::new(&plan);
                    for (index, spec) in plan.tiles().into_iter().enumerate() {
                        let lat = zs
                            .narrow(2, spec.in_rows.start, spec.in_rows.len())?
                            .narrow(3, spec.in_cols.start, spec.in_cols.len())?
                            .contiguous()?;
                        let tile = self.decode_tile(decoder, pq, &lat)?;
                        let spec = asm.push(tile, |tile, spec| out.write_piece(bi, tile, spec));
                        progress(VaeProgress::Tile { index, total, spec });
                    }
                }
                _ => {
                    let xs = pq.forward(&zs, None)?;
                    let mut cache = FeatCache::new();
                    let mut frame = 0;
                    for i in 0..t {
                        let ys = decoder.forward_chunk(&xs.narrow(0, i, 1)?, &mut cache, i == 0)?;
                        let ys = to_host_f32(&ys)?;
                        let n = ys.dim(0)?;
                        out.write_frames(bi, frame, &ys)?;
                        frame += n;
                        progress(VaeProgress::Chunk { index: i, total: t });
                    }
                    if frame != frames {
                        candle_core::bail!("decoder produced {frame} frames, expected {frames}");
                    }
                }
            }
        }
        out.into_tensor()
    }

    /// Halo mode: this rank decodes its row slab of every frame (`split_rows` of the latent height
    /// over the exchange's ranks), exchanging halo rows at every spatial conv; the finished rows of
    /// each latent chunk go to rank 0, which returns the whole video (others return `None`). Equal
    /// to the untiled [`Self::decode`] within f32 rounding.
    pub fn decode_halo(
        &self,
        z: &Tensor,
        split: std::sync::Arc<dyn RowExchange>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Option<Tensor>> {
        self.decode_halo_slabs(z, split, progress, &mut |_| {})
    }

    /// [`Self::decode_halo`], also handing each finished chunk slab of this rank to `on_slab`.
    pub fn decode_halo_slabs(
        &self,
        z: &Tensor,
        split: std::sync::Arc<dyn RowExchange>,
        progress: &mut dyn FnMut(VaeProgress),
        on_slab: &mut dyn FnMut(HaloSlab<'_>),
    ) -> Result<Option<Tensor>> {
        let (b, _c, t, h, w) = self.check_latents(z)?;
        let (decoder, pq) = match (&self.decoder, &self.post_quant_conv) {
            (Some(d), Some(p)) => (d, p),
            _ => candle_core::bail!("this VAE was loaded without its decoder"),
        };
        let world = split.world_size();
        if world > h {
            candle_core::bail!(
                "halo decode over {world} ranks needs at least {world} latent rows, got {h}; use at most {h} ranks"
            );
        }
        let rows = split_rows(h, world)[split.rank()].clone();
        let p = self.cfg.patch();
        let net = self.cfg.network_spatial_factor();
        let frames = self.decoded_frames(t);
        let mut out = (split.rank() == 0)
            .then(|| OutputVideo::new(b, self.cfg.out_channels / (p * p), frames, h * net * p, w * net * p, p));
        for bi in 0..b {
            let zs = z.get(bi)?.transpose(0, 1)?.narrow(2, rows.start, rows.len())?;
            let zs = zs.to_device(&self.device)?.to_dtype(self.dtype)?.contiguous()?;
            let xs = pq.forward(&zs, None)?;
            let mut cache = FeatCache::with_split(split.clone());
            let mut frame = 0;
            for i in 0..t {
                let start = std::time::Instant::now();
                let waited = split.wait_seconds();
                let ys = to_host_f32(&decoder.forward_chunk(&xs.narrow(0, i, 1)?, &mut cache, i == 0)?)?;
                let n = ys.dim(0)?;
                on_slab(HaloSlab {
                    batch: bi,
                    chunk: i,
                    chunks: t,
                    frame,
                    latent_rows: rows.clone(),
                    latent_w: w,
                    data: &ys,
                    seconds: start.elapsed().as_secs_f64(),
                    halo_wait_seconds: split.wait_seconds() - waited,
                });
                if let Some(full) = split.gather_to_root(&ys, 2)? {
                    if let Some(out) = out.as_mut() {
                        out.write_frames(bi, frame, &full)?;
                    }
                }
                frame += n;
                progress(VaeProgress::Chunk { index: i, total: t });
            }
        }
        out.map(OutputVideo::into_tensor).transpose()
    }

    /// Decodes one latent tile `[T, z, th, tw]` over all its frames with its own cache.
    pub(super) fn decode_tile(&self, decoder: &Decoder, pq: &CausalConv3d, lat: &Tensor) -> Result<TileBuf> {
        let xs = pq.forward(lat, None)?;
        let mut cache = FeatCache::new();
        let mut chunks = Vec::new();
        for i in 0..xs.dim(0)? {
            chunks.push(to_host_f32(&decoder.forward_chunk(&xs.narrow(0, i, 1)?, &mut cache, i == 0)?)?);
        }
        tile_from_frames(&Tensor::cat(&chunks, 0)?)
    }

    /// `vae.encode(video).latent_dist`: `[B, 3, F, H, W]` in [-1, 1] → mean and logvar `[B, z, T, h, w]`.
    /// Frames beyond the last `4k + 1` are dropped, as diffusers does.
    pub fn encode(
        &self,
        video: &Tensor,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        let (encoder, qc) = self.encoder_parts()?;
        let (b, f, h, w) = self.check_video(video)?;
        let p = self.cfg.patch();
        let net = self.cfg.network_spatial_factor();
        if let Some(tl) = tiling {
            tl.validate(net).map_err(candle_core::Error::msg)?;
        }
        let mut means = Vec::with_capacity(b);
        let mut logvars = Vec::with_capacity(b);
        for bi in 0..b {
            let xs = patchify(&video.get(bi)?.to_device(&self.device)?.to_dtype(self.dtype)?, p)?; // (f, c·p², h/p, w/p)
            let moments = match tiling {
                Some(tl) if TilePlan::encode_needs_tiling(tl, h, w) => {
                    let plan = TilePlan::for_encode(tl, h / p, w / p, net);
                    let total = plan.rows() * plan.cols();
                    let lat_t = 1 + (f - 1) / 4;
                    let mut lat = vec![0f32; lat_t * 2 * self.cfg.z_dim * plan.out_h * plan.out_w];
                    let mut asm = TileAssembler::new(&plan);
                    for (index, spec) in plan.tiles().into_iter().enumerate() {
                        let region = xs
                            .narrow(2, spec.in_rows.start, spec.in_rows.len())?
                            .narrow(3, spec.in_cols.start, spec.in_cols.len())?
                            .contiguous()?;
                        let tile =
                            tile_from_frames(&to_host_f32(&self.encode_frames(encoder, qc, &region, &mut |_| {})?)?)?;
                        let spec =
                            asm.push(tile, |tile, spec| copy_piece(&mut lat, plan.out_h, plan.out_w, tile, spec));
                        progress(VaeProgress::Tile { index, total, spec });
                    }
                    Tensor::from_vec(lat, (lat_t, 2 * self.cfg.z_dim, plan.out_h, plan.out_w), &Device::Cpu)?
                }
                _ => to_host_f32(&self.encode_frames(encoder, qc, &xs, progress)?)?,
            };
            // (t, 2z, h, w) -> (2z, t, h, w)
            let moments = moments.transpose(0, 1)?.contiguous()?;
            let (mean, logvar) = split_moments(&moments, self.cfg.z_dim, 0)?;
            means.push(mean);
            logvars.push(logvar);
        }
        Ok(Moments { mean: Tensor::stack(&means, 0)?, logvar: Tensor::stack(&logvars, 0)? })
    }

    pub(super) fn decoder_parts(&self) -> Result<(&Decoder, &CausalConv3d)> {
        match (&self.decoder, &self.post_quant_conv) {
            (Some(d), Some(p)) => Ok((d, p)),
            _ => candle_core::bail!("this VAE was loaded without its decoder"),
        }
    }

    pub(super) fn encoder_parts(&self) -> Result<(&Encoder, &CausalConv3d)> {
        match (&self.encoder, &self.quant_conv) {
            (Some(e), Some(q)) => Ok((e, q)),
            _ => candle_core::bail!("this VAE was loaded without its encoder"),
        }
    }

    /// Validates a `[B, 3, F, H, W]` video for encoding; returns (B, F, H, W).
    pub(super) fn check_video(&self, video: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = video.dims();
        let [b, c, f, h, w] = dims[..] else {
            candle_core::bail!("video must be 5-D [B, 3, F, H, W], got {dims:?}");
        };
        let vc = self.cfg.video_channels();
        if c != vc {
            candle_core::bail!("video has {c} channels, expected {vc} (RGB) (shape {dims:?})");
        }
        let p = self.cfg.patch();
        let net = self.cfg.network_spatial_factor();
        if self.cfg.is_residual && (h % (p * net) != 0 || w % (p * net) != 0) {
            candle_core::bail!(
                "video {h}x{w}: this VAE needs height and width divisible by {} (nearest: {}x{})",
                p * net,
                h / (p * net) * (p * net),
                w / (p * net) * (p * net)
            );
        }
        if h % p != 0 || w % p != 0 {
            candle_core::bail!("video {h}x{w}: height and width must be divisible by the patch size {p}");
        }
        if b == 0 || f == 0 {
            candle_core::bail!("video shape {dims:?} has an empty dimension");
        }
        if (f - 1) % 4 != 0 {
            tracing::warn!(
                "video has {f} frames; encoding uses the first {} (4k+1), as diffusers does",
                1 + (f - 1) / 4 * 4
            );
        }
        Ok((b, f, h, w))
    }

    /// Halo-mode encode: each rank encodes its row slab with halo exchange at every conv; every rank
    /// receives the whole mean/logvar (all of them need the latents of an input image).
    pub fn encode_halo(
        &self,
        video: &Tensor,
        split: std::sync::Arc<dyn RowExchange>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        let (encoder, qc) = self.encoder_parts()?;
        let (b, _f, h, _w) = self.check_video(video)?;
        let unit = self.cfg.patch() * self.cfg.network_spatial_factor();
        if h % unit != 0 {
            candle_core::bail!(
                "halo encode needs a height divisible by {unit}, got {h} (nearest: {})",
                h / unit * unit
            );
        }
        let lat_h = h / unit;
        let world = split.world_size();
        if world > lat_h {
            candle_core::bail!("halo encode over {world} ranks needs at least {world} latent rows, got {lat_h}; use at most {lat_h} ranks");
        }
        let rows = split_rows(lat_h, world)[split.rank()].clone();
        let net = self.cfg.network_spatial_factor();
        let (mut means, mut logvars) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for bi in 0..b {
            let xs = patchify(&video.get(bi)?.to_device(&self.device)?.to_dtype(self.dtype)?, self.cfg.patch())?;
            let xs = xs.narrow(2, rows.start * net, rows.len() * net)?.contiguous()?;
            let mut cache = FeatCache::with_split(split.clone());
            let own = to_host_f32(&self.encode_chunks(encoder, qc, &xs, &mut cache, progress)?)?;
            let moments = split.all_gather(&own, 2)?.transpose(0, 1)?.contiguous()?; // (2z, t, h, w)
            let (mean, logvar) = split_moments(&moments, self.cfg.z_dim, 0)?;
            means.push(mean);
            logvars.push(logvar);
        }
        Ok(Moments { mean: Tensor::stack(&means, 0)?, logvar: Tensor::stack(&logvars, 0)? })
    }

    /// Encodes `[F, C, H, W]` in chunks of 1 then 4 frames, then applies `quant_conv`.
    pub(super) fn encode_frames(
        &self,
        encoder: &Encoder,
        qc: &CausalConv3d,
        xs: &Tensor,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Tensor> {
        self.encode_chunks(encoder, qc, xs, &mut FeatCache::new(), progress)
    }

    fn encode_chunks(
        &self,
        encoder: &Encoder,
        qc: &CausalConv3d,
        xs: &Tensor,
        cache: &mut FeatCache,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Tensor> {
        let f = xs.dim(0)?;
        let chunks = 1 + (f - 1) / 4;
        let mut outs = Vec::with_capacity(chunks);
        for i in 0..chunks {
            let chunk = if i == 0 { xs.narrow(0, 0, 1)? } else { xs.narrow(0, 1 + 4 * (i - 1), 4)? };
            let ys = encoder.forward_chunk(&chunk, cache)?;
            outs.push(qc.forward(&ys, None)?);
            progress(VaeProgress::Chunk { index: i, total: chunks });
        }
        Tensor::cat(&outs, 0)
    }
}

pub(super) fn to_host_f32(xs: &Tensor) -> Result<Tensor> {
    xs.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()
}

pub(super) fn tile_from_frames(xs: &Tensor) -> Result<TileBuf> {
    let (frames, channels, h, w) = xs.dims4()?;
    Ok(TileBuf { data: xs.flatten_all()?.to_vec1::<f32>()?, frames, channels, h, w })
}

/// `[C, F, H, W]` → patchified frames-major `[F, C·p², H/p, W/p]`; packed channel `c·p² + pw·p + ph`
/// (the W offset is the major index, as in diffusers' `patchify`).
pub fn patchify(video: &Tensor, p: usize) -> Result<Tensor> {
    let (c, f, h, w) = video.dims4()?;
    if p == 1 {
        return video.transpose(0, 1)?.contiguous();
    }
    video
        .reshape((c, f, h / p, p, w / p, p))? // (c, f, hp, ph, wp, pw)
        .permute((1, 0, 5, 3, 2, 4))? // (f, c, pw, ph, hp, wp)
        .contiguous()?
        .reshape((f, c * p * p, h / p, w / p))
}

/// Copies a tile piece into a frames-major host buffer `[T, C, out_h, out_w]`.
pub(super) fn copy_piece(dst: &mut [f32], out_h: usize, out_w: usize, tile: &TileBuf, spec: &TileSpec) {
    for f in 0..tile.frames {
        for c in 0..tile.channels {
            for (dy, y) in spec.out_rows.clone().enumerate() {
                let row = ((f * tile.channels + c) * out_h + y) * out_w;
                for (dx, x) in spec.out_cols.clone().enumerate() {
                    dst[row + x] = tile.get(f, c, dy, dx);
                }
            }
        }
    }
}

/// The preallocated decode result `[B, C, F, H, W]`, filled chunk by chunk or piece by piece with
/// unpatchify and clamp applied on the way in.
pub(super) struct OutputVideo {
    data: Vec<f32>,
    dims: [usize; 5],
    patch: usize,
}

impl OutputVideo {
    pub(super) fn new(b: usize, c: usize, f: usize, h: usize, w: usize, patch: usize) -> Self {
        Self { data: vec![0f32; b * c * f * h * w], dims: [b, c, f, h, w], patch }
    }

    /// Writes one decoder output value at patchified position (frame, packed channel, y, x).
    #[inline]
    fn put(&mut self, b: usize, frame: usize, cp: usize, y: usize, x: usize, v: f32) {
        let [_, c_n, f_n, h_n, w_n] = self.dims;
        let p = self.patch;
        let (c, pw, ph) = (cp / (p * p), (cp / p) % p, cp % p);
        let (yy, xx) = (y * p + ph, x * p + pw);
        let i = (((b * c_n + c) * f_n + frame) * h_n + yy) * w_n + xx;
        self.data[i] = v.clamp(-1.0, 1.0);
    }

    /// Whole frames `[n, C·p², H/p, W/p]` starting at `frame`.
    pub(super) fn write_frames(&mut self, b: usize, frame: usize, ys: &Tensor) -> Result<()> {
        let (n, cp_n, h, w) = ys.dims4()?;
        let data = ys.flatten_all()?.to_vec1::<f32>()?;
        for t in 0..n {
            for cp in 0..cp_n {
                for y in 0..h {
                    let row = ((t * cp_n + cp) * h + y) * w;
                    for x in 0..w {
                        self.put(b, frame + t, cp, y, x, data[row + x]);
                    }
                }
            }
        }
        Ok(())
    }

    /// A blended tile's cropped piece (patchified coordinates in `spec.out_*`).
    pub(super) fn write_piece(&mut self, b: usize, tile: &TileBuf, spec: &TileSpec) {
        for f in 0..tile.frames {
            for cp in 0..tile.channels {
                for (dy, y) in spec.out_rows.clone().enumerate() {
                    for (dx, x) in spec.out_cols.clone().enumerate() {
                        self.put(b, f, cp, y, x, tile.get(f, cp, dy, dx));
                    }
                }
            }
        }
    }

    pub(super) fn into_tensor(self) -> Result<Tensor> {
        Tensor::from_vec(self.data, &self.dims[..], &Device::Cpu)
    }
}
