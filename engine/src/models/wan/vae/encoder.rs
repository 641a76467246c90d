//! `WanEncoder3d`: conv_in → down stages → mid block → norm/SiLU → conv_out, one temporal chunk at a
//! time. Wan2.1 keeps its down stages as one flat list (`down_blocks.{i}` are resnets and resamples);
//! Wan2.2 groups each stage into a residual down block with an `AvgDown3D` shortcut.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{AvgDown3D, MidBlock, Resample, ResampleMode, ResidualBlock};
use super::cache::FeatCache;
use super::config::Config;
use super::layers::{CausalConv3d, RmsNorm};

#[derive(Debug, Clone)]
enum DownLayer {
    Res(ResidualBlock),
    Resample(Resample),
}

/// `WanResidualDownBlock` (Wan2.2).
#[derive(Debug, Clone)]
struct ResidualDownBlock {
    resnets: Vec<ResidualBlock>,
    downsampler: Option<Resample>,
    avg_shortcut: AvgDown3D,
}

impl ResidualDownBlock {
    fn forward(&self, xs: Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let shortcut = self.avg_shortcut.forward(&xs)?;
        let mut hs = xs;
        for r in &self.resnets {
            hs = r.forward(hs, cache)?;
        }
        if let Some(d) = &self.downsampler {
            hs = d.forward(hs, cache, None)?;
        }
        hs + shortcut
    }
}

#[derive(Debug, Clone)]
enum DownBlocks {
    Flat(Vec<DownLayer>),
    Residual(Vec<ResidualDownBlock>),
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: CausalConv3d,
    down_blocks: DownBlocks,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.base_dim;
        let dims: Vec<usize> = std::iter::once(1).chain(cfg.dim_mult.iter().copied()).map(|u| u * dim).collect();
        let stages = cfg.dim_mult.len();
        let conv_in = CausalConv3d::new(cfg.in_channels, dims[0], 3, 3, 1, vb.pp("conv_in"))?;
        let vd = vb.pp("down_blocks");
        let down_blocks = if cfg.is_residual {
            let mut blocks = Vec::with_capacity(stages);
            for i in 0..stages {
                let (in_dim, out_dim) = (dims[i], dims[i + 1]);
                let last = i == stages - 1;
                let temporal = !last && cfg.temperal_downsample[i];
                let vbi = vd.pp(i);
                let mut resnets = Vec::with_capacity(cfg.num_res_blocks);
                let mut cur = in_dim;
                for j in 0..cfg.num_res_blocks {
                    resnets.push(ResidualBlock::new(cur, out_dim, vbi.pp("resnets").pp(j))?);
                    cur = out_dim;
                }
                let downsampler = if last {
                    None
                } else {
                    let mode = if temporal { ResampleMode::Downsample3d } else { ResampleMode::Downsample2d };
                    Some(Resample::new(out_dim, mode, out_dim, vbi.pp("downsampler"))?)
                };
                let avg_shortcut =
                    AvgDown3D::new(in_dim, out_dim, if temporal { 2 } else { 1 }, if last { 1 } else { 2 })?;
                blocks.push(ResidualDownBlock { resnets, downsampler, avg_shortcut });
            }
            DownBlocks::Residual(blocks)
        } else {
            let mut layers = Vec::new();
            for i in 0..stages {
                let mut in_dim = dims[i];
                let out_dim = dims[i + 1];
                for _ in 0..cfg.num_res_blocks {
                    layers.push(DownLayer::Res(ResidualBlock::new(in_dim, out_dim, vd.pp(layers.len()))?));
                    in_dim = out_dim;
                }
                if i != stages - 1 {
                    let mode = if cfg.temperal_downsample[i] {
                        ResampleMode::Downsample3d
                    } else {
                        ResampleMode::Downsample2d
                    };
                    layers.push(DownLayer::Resample(Resample::new(out_dim, mode, out_dim, vd.pp(layers.len()))?));
                }
            }
            DownBlocks::Flat(layers)
        };
        let out_dim = dims[stages];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(out_dim, vb.pp("mid_block"))?,
            norm_out: RmsNorm::new(out_dim, false, vb.pp("norm_out"))?,
            // Kept in f32 whatever the run dtype (the bf16 CUDA VAE): see `forward_chunk`.
            conv_out: CausalConv3d::new(out_dim, cfg.z_dim * 2, 3, 3, 1, vb.pp("conv_out").set_dtype(DType::F32))?,
        })
    }

    /// Encodes one temporal chunk `[T, C_in, H, W]` (1 frame first, then 4) into `[T', 2z, h, w]`.
    pub fn forward_chunk(&self, xs: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        cache.start_chunk();
        let split = cache.split();
        let mut hs = self.conv_in.forward_cached(xs, cache.next_slot(), None, split.as_deref())?;
        match &self.down_blocks {
            DownBlocks::Flat(layers) => {
                for layer in layers {
                    hs = match layer {
                        DownLayer::Res(r) => r.forward(hs, cache)?,
                        DownLayer::Resample(r) => r.forward(hs, cache, None)?,
                    };
                }
            }
            DownBlocks::Residual(blocks) => {
                for b in blocks {
                    hs = b.forward(hs, cache)?;
                }
            }
        }
        let hs = self.mid_block.forward(hs, cache)?;
        // A half-precision encode runs its last norm and conv in f32: the moments come out of f32.
        let hs = hs.to_dtype(DType::F32)?;
        let hs = self.norm_out.forward(&hs, true)?;
        self.conv_out.forward_cached(&hs, cache.next_slot(), None, split.as_deref())
    }
}
