//! `WanDecoder3d`: conv_in → mid block → up stages → norm/SiLU → conv_out, one latent frame per
//! call. Wan2.1 up blocks halve their input width after the first stage; Wan2.2 residual up blocks
//! keep it and add a `DupUp3D` shortcut.
//!
//! Memory: once the last temporal upsampler has run, every remaining layer maps frame t to frame t
//! (causal convs read earlier frames only through their caches, norms are per pixel), so that tail
//! — the widest maps of the decoder — runs one frame at a time. A chunk's 4 frames cost one frame's
//! working set there, and the result is the same as the 4-frame pass: each output frame is the same
//! per-frame arithmetic over the same cached history.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{DupUp3D, MidBlock, Resample, ResampleMode, ResidualBlock};
use super::cache::FeatCache;
use super::config::Config;
use super::layers::{CausalConv3d, RmsNorm};

/// One up stage: `WanUpBlock` (Wan2.1, `upsamplers.0`) or `WanResidualUpBlock` (Wan2.2, `upsampler`
/// plus the `DupUp3D` shortcut).
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
    shortcut: Option<DupUp3D>,
}

impl UpBlock {
    fn forward(&self, xs: Tensor, cache: &mut FeatCache, first_chunk: bool) -> Result<Tensor> {
        // The shortcut depends only on the block input: compute it first so the input can be freed,
        // then fuse the add into the upsampler's conv.
        let shortcut = self.shortcut.as_ref().map(|dup| dup.forward(&xs, first_chunk)).transpose()?;
        let mut hs = xs;
        for r in &self.resnets {
            hs = r.forward(hs, cache)?;
        }
        match (&self.upsampler, shortcut) {
            (Some(u), shortcut) => u.forward(hs, cache, shortcut.as_ref()),
            (None, Some(shortcut)) => hs + shortcut,
            (None, None) => Ok(hs),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    /// The first up block after the last temporal upsampler: it and everything after it keep the
    /// frame count, and run frame by frame.
    frame_tail_from: usize,
}

impl Decoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.decoder_dim();
        let stages = cfg.dim_mult.len();
        let dims: Vec<usize> = std::iter::once(cfg.dim_mult[stages - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|u| u * dim)
            .collect();
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let conv_in = CausalConv3d::new(cfg.z_dim, dims[0], 3, 3, 1, vb.pp("conv_in"))?;
        let mid_block = MidBlock::new(dims[0], vb.pp("mid_block"))?;
        let mut up_blocks = Vec::with_capacity(stages);
        for i in 0..stages {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            if i > 0 && !cfg.is_residual {
                in_dim /= 2;
            }
            let up_flag = i != stages - 1;
            let temporal = up_flag && temperal_upsample[i];
            let mode = if temporal { ResampleMode::Upsample3d } else { ResampleMode::Upsample2d };
            let vbi = vb.pp("up_blocks").pp(i);
            let mut resnets = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut cur = in_dim;
            for j in 0..=cfg.num_res_blocks {
                resnets.push(ResidualBlock::new(cur, out_dim, vbi.pp("resnets").pp(j))?);
                cur = out_dim;
            }
            let block = if cfg.is_residual {
                UpBlock {
                    resnets,
                    upsampler: if up_flag {
                        Some(Resample::new(out_dim, mode, out_dim, vbi.pp("upsampler"))?)
                    } else {
                        None
                    },
                    shortcut: if up_flag {
                        Some(DupUp3D::new(in_dim, out_dim, if temporal { 2 } else { 1 }, 2)?)
                    } else {
                        None
                    },
                }
            } else {
                UpBlock {
                    resnets,
                    upsampler: if up_flag {
                        Some(Resample::new(out_dim, mode, out_dim / 2, vbi.pp("upsamplers").pp(0))?)
                    } else {
                        None
                    },
                    shortcut: None,
                }
            };
            up_blocks.push(block);
        }
        let out_dim = dims[stages];
        let frame_tail_from = frame_tail_from(cfg);
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            norm_out: RmsNorm::new(out_dim, false, vb.pp("norm_out"))?,
            // Kept in f32 whatever the run dtype (the bf16 CUDA VAE): see `forward_tail`.
            conv_out: CausalConv3d::new(out_dim, cfg.out_channels, 3, 3, 1, vb.pp("conv_out").set_dtype(DType::F32))?,
            frame_tail_from,
        })
    }

    /// Decodes one latent chunk `[T, z, h, w]` (one frame in diffusers' loop) to `[T', C_out, H, W]`;
    /// the first chunk yields 1 frame per latent frame, later chunks 4.
    pub fn forward_chunk(&self, xs: &Tensor, cache: &mut FeatCache, first_chunk: bool) -> Result<Tensor> {
        cache.start_chunk();
        let split = cache.split();
        let mut hs = self.conv_in.forward_cached(xs, cache.next_slot(), None, split.as_deref())?;
        hs = self.mid_block.forward(hs, cache)?;
        for b in &self.up_blocks[..self.frame_tail_from] {
            hs = b.forward(hs, cache, first_chunk)?;
        }
        let frames = hs.dim(0)?;
        if frames == 1 {
            return self.forward_tail(hs, cache, first_chunk, split.as_deref());
        }
        let mark = cache.cursor();
        let mut outs = Vec::with_capacity(frames);
        for t in 0..frames {
            cache.rewind(mark);
            outs.push(self.forward_tail(hs.narrow(0, t, 1)?, cache, first_chunk, split.as_deref())?);
        }
        Tensor::cat(&outs, 0)
    }

    /// The frame-preserving tail on `[t, C, h, w]`: the up blocks from `frame_tail_from`, the
    /// output norm and conv.
    fn forward_tail(
        &self,
        mut hs: Tensor,
        cache: &mut FeatCache,
        first_chunk: bool,
        split: Option<&dyn super::split::RowExchange>,
    ) -> Result<Tensor> {
        for b in &self.up_blocks[self.frame_tail_from..] {
            hs = b.forward(hs, cache, first_chunk)?;
        }
        // A half-precision decode runs its last norm and conv in f32: the pixels come out of f32
        // arithmetic (the norm's statistics are f32 in every norm, as in diffusers).
        let hs = hs.to_dtype(DType::F32)?;
        let hs = self.norm_out.forward(&hs, true)?;
        self.conv_out.forward_cached(&hs, cache.next_slot(), None, split)
    }
}

/// Index of the first up block after the last temporal upsampler (up block `i` upsamples in time
/// when it is not the last and `temperal_downsample`, reversed, says so).
pub fn frame_tail_from(cfg: &Config) -> usize {
    let stages = cfg.dim_mult.len();
    let temporal = |i: usize| i != stages - 1 && cfg.temperal_downsample.iter().rev().nth(i).copied().unwrap_or(false);
    (0..stages).rev().find(|&i| temporal(i)).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::{frame_tail_from, Decoder};
    use crate::models::wan::vae::cache::FeatCache;
    use crate::models::wan::vae::config::Config;

    impl Decoder {
        /// The chunk with every layer on all its frames at once (what `forward_chunk` did before
        /// the frame-by-frame tail).
        fn forward_chunk_whole(
            &self,
            xs: &Tensor,
            cache: &mut FeatCache,
            first_chunk: bool,
        ) -> candle_core::Result<Tensor> {
            cache.start_chunk();
            let mut hs = self.conv_in.forward_cached(xs, cache.next_slot(), None, None)?;
            hs = self.mid_block.forward(hs, cache)?;
            for b in &self.up_blocks {
                hs = b.forward(hs, cache, first_chunk)?;
            }
            let hs = self.norm_out.forward(&hs.to_dtype(DType::F32)?, true)?;
            self.conv_out.forward_cached(&hs, cache.next_slot(), None, None)
        }
    }

    #[test]
    fn frame_by_frame_tail_equals_the_whole_chunk() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/vae22/vae");
        let cfg: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(frame_tail_from(&cfg), 2, "Wan2.2: up blocks 0 and 1 upsample in time");
        let dev = Device::Cpu;
        let tensors = candle_core::safetensors::load(dir.join("diffusion_pytorch_model.safetensors"), &dev).unwrap();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let decoder = Decoder::new(&cfg, vb.pp("decoder")).unwrap();
        let z = Tensor::randn(0f32, 1.0, (3, cfg.z_dim, 6, 8), &dev).unwrap();
        let (mut a, mut b) = (FeatCache::new(), FeatCache::new());
        for i in 0..3 {
            let x = z.narrow(0, i, 1).unwrap();
            let tail = decoder.forward_chunk(&x, &mut a, i == 0).unwrap();
            let whole = decoder.forward_chunk_whole(&x, &mut b, i == 0).unwrap();
            assert_eq!(tail.dims(), whole.dims());
            let max_abs: f32 =
                (&tail - &whole).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            let scale: f32 = whole.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            println!("chunk {i}: {:?} frames, max-abs difference {max_abs:e} (output max {scale:e})", tail.dims()[0]);
            // The same per-frame arithmetic over the same cached history: no rounding difference.
            assert_eq!(max_abs, 0.0, "chunk {i}");
        }
    }
}
