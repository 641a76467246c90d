//! VAE building blocks: residual block, per-frame attention, mid block, resampling and the Wan2.2
//! parameter-free shortcuts (`AvgDown3D`, `DupUp3D`). All activations are `[T, C, H, W]`; blocks
//! take their input by value so it can be freed as soon as it is no longer needed.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::cache::{FeatCache, Slot};
use super::layers::{CausalConv3d, RmsNorm};
use super::ops::{self, ConvInputs};
use super::split::{with_halo, RowExchange};

/// `WanResidualBlock`: `conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)`.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    conv_shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(in_dim, false, vb.pp("norm1"))?,
            conv1: CausalConv3d::new(in_dim, out_dim, 3, 3, 1, vb.pp("conv1"))?,
            norm2: RmsNorm::new(out_dim, false, vb.pp("norm2"))?,
            conv2: CausalConv3d::new(out_dim, out_dim, 3, 3, 1, vb.pp("conv2"))?,
            conv_shortcut: if in_dim != out_dim {
                Some(CausalConv3d::new(in_dim, out_dim, 1, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, xs: Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(&xs, None)?,
            None => xs.clone(),
        };
        let hs = self.norm1.forward(&xs, true)?;
        drop(xs);
        let split = cache.split();
        let hs = self.conv1.forward_cached(&hs, cache.next_slot(), None, split.as_deref())?;
        let hs = self.norm2.forward(&hs, true)?;
        // The residual add is fused into conv2's output initialisation.
        self.conv2.forward_cached(&hs, cache.next_slot(), Some(&shortcut), split.as_deref())
    }
}

/// `WanAttentionBlock`: single-head self-attention within each frame over its h·w pixels.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: CausalConv3d,
    proj: CausalConv3d,
    dim: usize,
}

/// Upper bound on one block of attention scores, in elements (keeps the h·w × h·w matrix of a
/// 720p frame, 0.8 GB in f32, from ever materialising).
const ATTN_SCORE_BLOCK: usize = 1 << 22;

impl AttentionBlock {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: CausalConv3d::conv2d(dim, dim * 3, 1, 1, (0, 0, 0, 0), vb.pp("to_qkv"))?,
            proj: CausalConv3d::conv2d(dim, dim, 1, 1, (0, 0, 0, 0), vb.pp("proj"))?,
            dim,
        })
    }

    /// In halo mode (`halo` given) `xs` is this rank's row slab: keys and values of the whole frame
    /// are gathered, queries stay local, so each rank attends for its own pixels exactly.
    pub fn forward(&self, xs: Tensor, halo: Option<&dyn super::split::RowExchange>) -> Result<Tensor> {
        let (t, c, h, w) = xs.dims4()?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&xs, false)?, None)?; // (t, 3c, h, w)
        let q = qkv.narrow(1, 0, c)?.reshape((t, c, h * w))?.transpose(1, 2)?.contiguous()?; // (t, hw, c)
        let kv = match halo {
            Some(ex) => ex.all_gather(&qkv.narrow(1, c, 2 * c)?.contiguous()?, 2)?, // (t, 2c, H, w)
            None => qkv.narrow(1, c, 2 * c)?,
        };
        drop(qkv);
        let n_kv = kv.dim(2)? * w;
        let kv = kv.reshape((t, 2 * c, n_kv))?;
        let k = kv.narrow(1, 0, c)?.contiguous()?; // (t, c, HW)
        let v = kv.narrow(1, c, c)?.transpose(1, 2)?.contiguous()?; // (t, HW, c)
        drop(kv);
        let scale = 1.0 / (self.dim as f64).sqrt();
        let n = h * w;
        let block = (ATTN_SCORE_BLOCK / n_kv.max(1)).clamp(1, n);
        super::ops::count_flops(2 * t * n * n_kv * c);
        let mut outs = Vec::with_capacity(n.div_ceil(block));
        for start in (0..n).step_by(block) {
            let len = block.min(n - start);
            let qb = (q.narrow(1, start, len)? * scale)?;
            let scores = qb.matmul(&k)?; // (t, len, HW)
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(probs.matmul(&v)?); // (t, len, c)
        }
        let attn = Tensor::cat(&outs, 1)?.transpose(1, 2)?.contiguous()?.reshape((t, c, h, w))?;
        self.proj.forward(&attn, Some(&xs))
    }
}

/// `WanMidBlock`: resnet, attention, resnet.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResidualBlock>,
    attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let resnets = (0..2).map(|i| ResidualBlock::new(dim, dim, vb.pp("resnets").pp(i))).collect::<Result<_>>()?;
        let attentions = vec![AttentionBlock::new(dim, vb.pp("attentions").pp(0))?];
        Ok(Self { resnets, attentions })
    }

    pub fn forward(&self, xs: Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let xs = self.resnets[0].forward(xs, cache)?;
        let split = cache.split();
        let xs = self.attentions[0].forward(xs, split.as_deref())?;
        self.resnets[1].forward(xs, cache)
    }
}

/// The four `WanResample` modes used by the Wan VAEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// `WanResample`: spatial ×2 up/down per frame plus, for the 3-D modes, a causal time conv.
///
/// Each mode holds exactly the layers it runs, so a 3-D mode cannot lack its time conv.
#[derive(Debug, Clone)]
pub struct Resample {
    kind: ResampleKind,
}

#[derive(Debug, Clone)]
enum ResampleKind {
    Upsample2d(Upsample),
    /// `time_conv` doubles the frames (after the first chunk), then every frame is upsampled.
    Upsample3d {
        up: Upsample,
        time_conv: CausalConv3d,
    },
    /// `resample.1`: the stride-2 3×3 conv.
    Downsample2d(CausalConv3d),
    /// `conv` per frame, then `time_conv` halves the frames (stride 2 over time).
    Downsample3d {
        conv: CausalConv3d,
        time_conv: CausalConv3d,
    },
}

/// Nearest ×2 upsampling then `resample.1`, the per-frame 3×3 conv.
#[derive(Debug, Clone)]
struct Upsample {
    conv: CausalConv3d,
    /// Sub-pixel weights of the fused upsample conv (CPU f32 only).
    phases: Option<Tensor>,
}

impl Resample {
    /// `up_out`: output channels of the upsampling conv (`dim / 2` for Wan2.1, `dim` for Wan2.2).
    pub fn new(dim: usize, mode: ResampleMode, up_out: usize, vb: VarBuilder) -> Result<Self> {
        let vr = vb.pp("resample").pp(1);
        let upsample = |vr| -> Result<Upsample> {
            let conv = CausalConv3d::conv2d(dim, up_out, 3, 1, (1, 1, 1, 1), vr)?;
            let phases = ops::upsample_phases(conv.weight())?;
            Ok(Upsample { conv, phases })
        };
        // ZeroPad2d((0, 1, 0, 1)) then a stride-2 3×3 conv: padding only right and bottom.
        let downsample = |vr| CausalConv3d::conv2d(dim, dim, 3, 2, (0, 1, 0, 1), vr);
        let kind = match mode {
            ResampleMode::Upsample2d => ResampleKind::Upsample2d(upsample(vr)?),
            ResampleMode::Upsample3d => ResampleKind::Upsample3d {
                up: upsample(vr)?,
                time_conv: CausalConv3d::new(dim, dim * 2, 3, 1, 0, vb.pp("time_conv"))?,
            },
            ResampleMode::Downsample2d => ResampleKind::Downsample2d(downsample(vr)?),
            ResampleMode::Downsample3d => ResampleKind::Downsample3d {
                conv: downsample(vr)?,
                time_conv: CausalConv3d::new(dim, dim, 3, 1, 0, vb.pp("time_conv"))?,
            },
        };
        Ok(Self { kind })
    }

    /// `residual` (upsampling modes only) is added to the output, fused into the conv on CPU.
    pub fn forward(&self, xs: Tensor, cache: &mut FeatCache, residual: Option<&Tensor>) -> Result<Tensor> {
        let split = cache.split();
        match &self.kind {
            ResampleKind::Upsample2d(up) => up.forward(xs, residual, split.as_deref()),
            ResampleKind::Upsample3d { up, time_conv } => {
                let slot = cache.next_slot();
                let xs = if matches!(slot, Slot::Empty) {
                    // First chunk: diffusers marks "Rep" and skips the time conv (1 frame in, 1 out).
                    *slot = Slot::Rep;
                    xs
                } else {
                    let (t, c, h, w) = xs.dims4()?;
                    let ys = time_conv.forward_cached(&xs, slot, None, None)?; // (t, 2c, h, w)
                                                                               // Channels [0,c) give frame 2i, [c,2c) frame 2i+1: a free reshape in this layout.
                    ys.reshape((2 * t, c, h, w))?
                };
                up.forward(xs, residual, split.as_deref())
            }
            ResampleKind::Downsample2d(_) | ResampleKind::Downsample3d { .. } if residual.is_some() => {
                candle_core::bail!("a residual can only be fused into an upsampling resample")
            }
            ResampleKind::Downsample2d(conv) => conv.forward_split(&xs, None, split.as_deref()),
            ResampleKind::Downsample3d { conv, time_conv } => {
                let xs = conv.forward_split(&xs, None, split.as_deref())?;
                let slot = cache.next_slot();
                let t_len = xs.dim(0)?;
                match slot.frames().cloned() {
                    None => {
                        // First chunk: remember the last frame, pass the chunk through unchanged.
                        *slot = Slot::Frames(ops::copy_frames(&xs, t_len - 1, 1)?);
                        Ok(xs)
                    }
                    Some(prev) => {
                        let ys = time_downsample(time_conv, &prev, &xs)?;
                        *slot = Slot::Frames(ops::copy_frames(&xs, t_len - 1, 1)?);
                        Ok(ys)
                    }
                }
            }
        }
    }
}

impl Upsample {
    /// Nearest ×2 upsampling then the 3×3 conv, per frame.
    ///
    /// In halo mode the slab gets one neighbour row above and below; the upsampled conv over that
    /// extended slab is exact for the slab's own rows, which are cut out (the residual is added after).
    fn forward(&self, xs: Tensor, residual: Option<&Tensor>, halo: Option<&dyn RowExchange>) -> Result<Tensor> {
        match halo {
            None => ops::upsample_conv(&xs, self.conv.weight(), self.conv.bias(), self.phases.as_ref(), residual),
            Some(ex) => {
                let h = xs.dim(2)?;
                let ext = with_halo(ex, &xs, 1, 1)?;
                drop(xs);
                let ys = ops::upsample_conv(&ext, self.conv.weight(), self.conv.bias(), self.phases.as_ref(), None)?;
                let ys = ys.narrow(2, 2, 2 * h)?.contiguous()?;
                match residual {
                    Some(r) => ys + r,
                    None => Ok(ys),
                }
            }
        }
    }
}

/// Stride-2 causal time conv over `[prev_last, xs…]` without padding: output k reads frames
/// 2k, 2k+1, 2k+2 of that sequence.
fn time_downsample(time_conv: &CausalConv3d, prev: &Tensor, xs: &Tensor) -> Result<Tensor> {
    let mut frames = vec![prev.get(prev.dim(0)? - 1)?];
    for t in 0..xs.dim(0)? {
        frames.push(xs.get(t)?);
    }
    if frames.len() < 3 {
        candle_core::bail!("temporal downsample needs at least 2 new frames per chunk, got {}", xs.dim(0)?);
    }
    let outs = (frames.len() - 3) / 2 + 1;
    let taps = (0..outs).map(|k| (0..3).map(|j| Some(&frames[2 * k + j])).collect()).collect();
    ops::conv_frames(&ConvInputs { taps }, time_conv.weight(), time_conv.bias(), 1, (0, 0, 0, 0), None)
}

/// `AvgDown3D` (Wan2.2 encoder shortcut): space/time-to-channel packing then a mean over groups.
#[derive(Debug, Clone, Copy)]
pub struct AvgDown3D {
    out_channels: usize,
    factor_t: usize,
    factor_s: usize,
}

impl AvgDown3D {
    pub fn new(in_channels: usize, out_channels: usize, factor_t: usize, factor_s: usize) -> Result<Self> {
        if !(in_channels * factor_t * factor_s * factor_s).is_multiple_of(out_channels) {
            candle_core::bail!("AvgDown3D {in_channels}->{out_channels}: channels do not divide");
        }
        Ok(Self { out_channels, factor_t, factor_s })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (ft, fs) = (self.factor_t, self.factor_s);
        let (t, c, h, w) = xs.dims4()?;
        let pad_t = (ft - t % ft) % ft;
        let xs = if pad_t > 0 { xs.pad_with_zeros(0, pad_t, 0)? } else { xs.clone() };
        let t2 = (t + pad_t) / ft;
        let (h2, w2) = (h / fs, w / fs);
        if h2 * fs != h || w2 * fs != w {
            candle_core::bail!("AvgDown3D: {h}x{w} is not divisible by {fs}");
        }
        // (t2, ft, c, h2, fs, w2, fs) -> (t2, c, ft, fs, fs, h2, w2): packed channel ((c·ft+a)·fs+dh)·fs+dw.
        let packed = xs.reshape(vec![t2, ft, c, h2, fs, w2, fs])?.permute(vec![0, 2, 1, 4, 6, 3, 5])?.contiguous()?;
        let group = c * ft * fs * fs / self.out_channels;
        packed.reshape((t2, self.out_channels, group, h2, w2))?.mean(2)
    }
}

/// `DupUp3D` (Wan2.2 decoder shortcut): channel-to-space/time unpacking of repeated channels.
#[derive(Debug, Clone, Copy)]
pub struct DupUp3D {
    out_channels: usize,
    factor_t: usize,
    factor_s: usize,
    repeats: usize,
}

impl DupUp3D {
    pub fn new(in_channels: usize, out_channels: usize, factor_t: usize, factor_s: usize) -> Result<Self> {
        let factor = factor_t * factor_s * factor_s;
        if !(out_channels * factor).is_multiple_of(in_channels) {
            candle_core::bail!("DupUp3D {in_channels}->{out_channels}: channels do not divide");
        }
        Ok(Self { out_channels, factor_t, factor_s, repeats: out_channels * factor / in_channels })
    }

    /// On the first chunk the first `factor_t - 1` output frames are dropped (diffusers `first_chunk`).
    pub fn forward(&self, xs: &Tensor, first_chunk: bool) -> Result<Tensor> {
        let (ft, fs, r) = (self.factor_t, self.factor_s, self.repeats);
        let (t, c, h, w) = xs.dims4()?;
        let skip = if first_chunk { ft - 1 } else { 0 };
        if ops::cpu_fast_path(xs) {
            let xs = xs.contiguous()?;
            let out = super::cpu_kernels::dup_up_frames(
                &ops::cpu_f32(&xs)?,
                (t, c, h, w),
                self.out_channels,
                ft,
                fs,
                r,
                skip,
            );
            return Tensor::from_vec(out, (t * ft - skip, self.out_channels, h * fs, w * fs), xs.device());
        }
        // repeat_interleave over channels: packed channel q reads input channel q / r.
        let rep = xs.unsqueeze(2)?.broadcast_as((t, c, r, h, w))?.reshape((t, c * r, h, w))?;
        // q = ((o·ft + a)·fs + dh)·fs + dw  →  out[t·ft + a, o, h·fs + dh, w·fs + dw].
        let ys = rep
            .reshape(vec![t, self.out_channels, ft, fs, fs, h, w])?
            .permute(vec![0, 2, 1, 5, 3, 6, 4])?
            .contiguous()?
            .reshape((t * ft, self.out_channels, h * fs, w * fs))?;
        if skip > 0 {
            ys.narrow(0, skip, t * ft - skip)
        } else {
            Ok(ys)
        }
    }
}

/// Splits `[T, 2z, …]` encoder moments into (mean, logvar clamped to [-30, 20]) along `dim`.
pub fn split_moments(moments: &Tensor, z_dim: usize, dim: usize) -> Result<(Tensor, Tensor)> {
    let mean = moments.narrow(dim, 0, z_dim)?;
    let logvar = moments.narrow(dim, z_dim, z_dim)?.clamp(-30f32, 20f32)?;
    Ok((mean, logvar))
}
