//! `HunyuanVideo15Decoder3D`: conv_in plus the latent channels repeated as a shortcut, mid block,
//! up blocks (resnets + DCAE upsamplers), then norm → SiLU → conv_out. No clamp (diffusers has none).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Config;
use super::layers::{repeat_channels, Caches, CausalConv3d, MidBlock, ResnetBlock, Rows, Upsample};
use crate::models::wan::vae::layers::RmsNorm;

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Upsample>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    /// Each latent channel repeated this often in conv_in's shortcut.
    repeat: usize,
}

impl Decoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let mid = cfg.mid_channels();
        let first = cfg.block_out_channels[0];
        let up_blocks = cfg
            .up_blocks()
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let vb = vb.pp(format!("up_blocks.{i}"));
                let resnets = (0..=cfg.layers_per_block)
                    .map(|j| {
                        ResnetBlock::new(if j == 0 { u.in_c } else { u.out_c }, u.out_c, vb.pp(format!("resnets.{j}")))
                    })
                    .collect::<Result<_>>()?;
                let upsampler =
                    u.up.map(|(c, temporal)| Upsample::new(u.out_c, c, temporal, vb.pp("upsamplers.0"))).transpose()?;
                Ok(UpBlock { resnets, upsampler })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: CausalConv3d::new(cfg.latent_channels, mid, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(mid, vb.pp("mid_block"))?,
            up_blocks,
            norm_out: RmsNorm::new(first, false, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(first, cfg.out_channels, vb.pp("conv_out"))?,
            repeat: mid / cfg.latent_channels,
        })
    }

    /// conv_in and the mid block (the golden cases' `dbg_dec_mid`); `caches.begin_chunk()` first.
    pub fn forward_mid(&self, z: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let shortcut = repeat_channels(z, self.repeat)?;
        let h = self.conv_in.forward(z, caches, rows, Some(&shortcut))?;
        self.mid_block.forward(&h, caches, rows)
    }

    /// Up block `i` on the output of the previous stage.
    pub fn forward_up(&self, i: usize, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let block = &self.up_blocks[i];
        let mut h = xs.clone();
        for r in &block.resnets {
            h = r.forward(&h, caches, rows)?;
        }
        match &block.upsampler {
            Some(u) => u.forward(&h, caches, rows),
            None => Ok(h),
        }
    }

    /// A chunk of latent frames `[T, z, h, w]` → video frames `[F, 3, 16h, 16w]`.
    pub fn forward(&self, z: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        caches.begin_chunk();
        let mut h = self.forward_mid(z, caches, rows)?;
        for i in 0..self.up_blocks.len() {
            h = self.forward_up(i, &h, caches, rows)?;
        }
        let h = self.norm_out.forward(&h, true)?;
        self.conv_out.forward(&h, caches, rows, None)
    }
}
