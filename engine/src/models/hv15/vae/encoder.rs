//! `HunyuanVideo15Encoder3D`: conv_in, down blocks (resnets + DCAE downsamplers), mid block, then
//! norm → SiLU → conv_out plus the group mean of the mid features as a shortcut.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Config;
use super::layers::{group_mean, Caches, CausalConv3d, Downsample, MidBlock, ResnetBlock, Rows};
use crate::models::wan::vae::layers::RmsNorm;

#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsampler: Option<Downsample>,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    /// Mid channels averaged per output channel in the shortcut.
    group: usize,
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let b = &cfg.block_out_channels;
        let out = 2 * cfg.latent_channels;
        let mid = cfg.mid_channels();
        let down_blocks = cfg
            .down_blocks()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let vb = vb.pp(format!("down_blocks.{i}"));
                let resnets = (0..cfg.layers_per_block)
                    .map(|j| {
                        ResnetBlock::new(if j == 0 { d.in_c } else { d.out_c }, d.out_c, vb.pp(format!("resnets.{j}")))
                    })
                    .collect::<Result<_>>()?;
                let downsampler = d
                    .down
                    .map(|(c, temporal)| Downsample::new(d.out_c, c, temporal, vb.pp("downsamplers.0")))
                    .transpose()?;
                Ok(DownBlock { resnets, downsampler })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: CausalConv3d::new(cfg.in_channels, b[0], vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(mid, vb.pp("mid_block"))?,
            norm_out: RmsNorm::new(mid, false, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(mid, out, vb.pp("conv_out"))?,
            group: mid / out,
        })
    }

    /// Up to and including the mid block (the golden cases' `dbg_enc_mid`).
    pub fn forward_mid(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let mut h = self.conv_in.forward(xs, caches, rows, None)?;
        for block in &self.down_blocks {
            for r in &block.resnets {
                h = r.forward(&h, caches, rows)?;
            }
            if let Some(d) = &block.downsampler {
                h = d.forward(&h, caches, rows)?;
            }
        }
        self.mid_block.forward(&h, caches, rows)
    }

    /// A chunk of video frames `[T, 3, H, W]` → moments `[T', 2z, H/16, W/16]`.
    pub fn forward(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        caches.begin_chunk();
        let h = self.forward_mid(xs, caches, rows)?;
        let shortcut = group_mean(&h, self.group)?;
        let h = self.norm_out.forward(&h, true)?;
        self.conv_out.forward(&h, caches, rows, Some(&shortcut))
    }
}
