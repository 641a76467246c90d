//! `HunyuanVideo15Transformer3DModel`: x_embedder, the three context streams (refined MLLM text,
//! ByT5 glyphs, SigLIP image), the dual-stream blocks, the output head.
//!
//! Context order and trimming: diffusers builds `[valid image, valid glyph, valid text, invalid
//! image, zeros, zeros]` with a mask that keeps every valid row away from the invalid ones (and video
//! rows are always valid), so only the valid prefix ever reaches the video output. This model takes
//! the valid rows only ([`Context`]) — the same numbers without the padded rows' work and without
//! fully masked query rows. T2V is explicit: no image tokens (diffusers detects all-zero image
//! embeddings and masks them out, which is the same).

use std::borrow::Cow;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::block::TransformerBlock;
use super::config::Config;
use super::embeddings::{
    cond_type, layer_norm_plain, rope_tables, GlyphProjection, ImageProjection, TimeEmbedding, TokenRefiner,
};
use super::ulysses::{JointAttention, LocalJoint, UlyssesJoint};
use crate::models::wan::transformer::attention::{AttentionBackend, ChunkedAttention};
use crate::models::wan::transformer::ulysses::SeqShard;
use crate::parallel::comm::Collective;

/// One sample's conditioning, valid tokens only.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// MLLM (Qwen) hidden states `[N, text_embed_dim]`, N ≥ 1.
    pub text: &'a Tensor,
    /// ByT5 glyph states `[M, text_embed_2_dim]`; `None` for a prompt without quoted text.
    pub glyph: Option<&'a Tensor>,
    /// SigLIP image states `[K, image_embed_dim]` (I2V); `None` for T2V.
    pub image: Option<&'a Tensor>,
}

/// The rows of `xs` `[S, D]` whose `mask` `[S]` is non-zero (`xs[mask.bool()]`), or `None` if none.
pub fn valid_rows(xs: &Tensor, mask: &Tensor) -> Result<Option<Tensor>> {
    let m: Vec<f32> = mask.to_dtype(DType::F32)?.to_vec1()?;
    if m.len() != xs.dim(0)? {
        candle_core::bail!("mask of {} entries for {} rows", m.len(), xs.dim(0)?);
    }
    let idx: Vec<u32> = m.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i as u32).collect();
    if idx.is_empty() {
        return Ok(None);
    }
    let n = idx.len();
    xs.index_select(&Tensor::from_vec(idx, n, xs.device())?, 0).map(Some)
}

#[derive(Debug, Clone)]
pub struct HunyuanVideo15Transformer3DModel {
    cfg: Config,
    x_embedder: Linear,
    image_embedder: ImageProjection,
    context_embedder: TokenRefiner,
    context_embedder_2: GlyphProjection,
    time_embed: TimeEmbedding,
    cond_type_embed: Tensor,
    blocks: Vec<TransformerBlock>,
    norm_out: Linear,
    proj_out: Linear,
}

impl HunyuanVideo15Transformer3DModel {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let mut model = Self::new_stem(cfg, vb.clone())?;
        model.blocks = (0..cfg.num_layers)
            .map(|i| TransformerBlock::new(cfg, vb.pp(format!("transformer_blocks.{i}"))))
            .collect::<Result<_>>()?;
        Ok(model)
    }

    /// The model without its dual-stream blocks (embedders, refiner, output head): what a rank keeps
    /// resident when the blocks come from elsewhere (FSDP, [`super::sharded`]).
    pub fn new_stem(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = cfg.inner_dim();
        let xw = vb.pp("x_embedder.proj");
        let x_embedder = Linear::new(
            xw.get((d, cfg.in_channels, 1, 1, 1), "weight")?.reshape((d, cfg.in_channels))?,
            Some(xw.get(d, "bias")?),
        );
        Ok(Self {
            cfg: cfg.clone(),
            x_embedder,
            image_embedder: ImageProjection::new(cfg, vb.pp("image_embedder"))?,
            context_embedder: TokenRefiner::new(cfg, vb.pp("context_embedder"))?,
            context_embedder_2: GlyphProjection::new(cfg, vb.pp("context_embedder_2"))?,
            time_embed: TimeEmbedding::new(cfg, vb.pp("time_embed"))?,
            cond_type_embed: vb.get((3, d), "cond_type_embed.weight")?,
            blocks: Vec::new(),
            norm_out: linear(d, 2 * d, vb.pp("norm_out.linear"))?,
            proj_out: linear(d, cfg.out_channels, vb.pp("proj_out"))?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `cond_type_embed.weight` `[3, D]`: rows added to text (0), glyph (1) and image (2) tokens.
    pub fn cond_type_embed(&self) -> &Tensor {
        &self.cond_type_embed
    }

    /// The dual-stream blocks, in order.
    pub fn blocks(&self) -> &[TransformerBlock] {
        &self.blocks
    }

    /// The global time embedding `[1, D]` of one sample.
    pub fn time_embedding(&self, t: &Tensor, t_r: Option<&Tensor>) -> Result<Tensor> {
        self.time_embed.forward(t, t_r)
    }

    /// One sample's latents `[C, T, H, W]` → video tokens `[T·H·W, D]` in (t, h, w) order.
    pub fn embed_video(&self, x: &Tensor) -> Result<Tensor> {
        let (c, t, h, w) = x.dims4()?;
        if c != self.cfg.in_channels {
            candle_core::bail!(
                "latents have {c} channels, this transformer takes in_channels = {}",
                self.cfg.in_channels
            );
        }
        x.reshape((c, t * h * w))?.t()?.apply(&self.x_embedder)
    }

    /// The context tokens `[valid image, valid glyph, text]` `[N', D]` of one sample at timestep `t`.
    pub fn context_tokens(&self, ctx: &Context<'_>, t: &Tensor) -> Result<Tensor> {
        let cte = &self.cond_type_embed;
        if ctx.text.dim(0)? == 0 {
            candle_core::bail!(
                "the text stream needs at least one valid token (its masked mean is undefined otherwise)"
            );
        }
        let text = self.context_embedder.forward(ctx.text, t)?.broadcast_add(&cond_type(cte, 0)?)?;
        let mut parts = Vec::with_capacity(3);
        if let Some(image) = ctx.image {
            parts.push(self.image_embedder.forward(image)?.broadcast_add(&cond_type(cte, 2)?)?);
        }
        if let Some(glyph) = ctx.glyph {
            parts.push(self.context_embedder_2.forward(glyph)?.broadcast_add(&cond_type(cte, 1)?)?);
        }
        parts.push(text);
        Tensor::cat(&parts, 0)
    }

    /// The velocity `[B, out, T, H, W]` for latents `[B, in, T, H, W]` at timesteps `t` `[B]`
    /// (`t_r` `[B]` for meanflow models), one [`Context`] per sample, on one device.
    pub fn forward(&self, x: &Tensor, t: &Tensor, t_r: Option<&Tensor>, contexts: &[Context<'_>]) -> Result<Tensor> {
        self.forward_with(x, t, t_r, contexts, None, &ChunkedAttention::default())
    }

    /// [`Self::forward`] with the video tokens split over the Ulysses group `comm` (every rank
    /// passes the same inputs and gets the whole output).
    pub fn forward_ulysses(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_r: Option<&Tensor>,
        contexts: &[Context<'_>],
        comm: &dyn Collective,
    ) -> Result<Tensor> {
        self.forward_with(x, t, t_r, contexts, Some(comm), &ChunkedAttention::default())
    }

    /// The forward with an explicit attention core, optionally sequence-parallel over `group`.
    pub fn forward_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_r: Option<&Tensor>,
        contexts: &[Context<'_>],
        group: Option<&dyn Collective>,
        inner: &dyn AttentionBackend,
    ) -> Result<Tensor> {
        self.forward_blocks(x, t, t_r, contexts, group, inner, self)
    }

    /// The forward with the dual-stream blocks taken from `blocks` (this model's own, or FSDP
    /// gathers: every rank of the FSDP group asks for the same blocks in the same order).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_blocks(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_r: Option<&Tensor>,
        contexts: &[Context<'_>],
        group: Option<&dyn Collective>,
        inner: &dyn AttentionBackend,
        blocks: &dyn BlockSource,
    ) -> Result<Tensor> {
        let (b, _c, nt, nh, nw) = x.dims5()?;
        if contexts.len() != b || t.dims1()? != b || t_r.map(|r| r.dims1()).transpose()?.is_some_and(|n| n != b) {
            candle_core::bail!(
                "batch of {b} latents needs {b} timesteps and {b} contexts, got {} contexts",
                contexts.len()
            );
        }
        let len = nt * nh * nw;
        let shard = group.map(|g| SeqShard::new(len, g.world_size(), g.rank().0)).transpose()?;
        let rope = rope_tables(&self.cfg, (nt, nh, nw), x.device())?;
        let rope = match &shard {
            Some(s) => s.rope(&rope)?,
            None => rope,
        };
        let attention: Box<dyn JointAttention + '_> = match (group, shard) {
            (Some(comm), Some(shard)) => Box::new(UlyssesJoint { comm, inner, shard }),
            _ => Box::new(LocalJoint(inner)),
        };
        let mut outs = Vec::with_capacity(b);
        for (i, ctx) in contexts.iter().enumerate() {
            let ti = t.narrow(0, i, 1)?;
            let tr = t_r.map(|r| r.narrow(0, i, 1)).transpose()?;
            let temb = self.time_embedding(&ti, tr.as_ref())?;
            let xs = self.embed_video(&x.get(i)?)?;
            let mut xs = match &shard {
                Some(s) => s.take(&xs, 0)?,
                None => xs,
            };
            let mut cs = self.context_tokens(ctx, &ti)?;
            for i in 0..blocks.num_blocks() {
                let _span = tracing::debug_span!("hv15_block", i).entered();
                (xs, cs) = blocks.block(i)?.forward(&xs, &cs, &temb, &rope, attention.as_ref())?;
            }
            // AdaLayerNormContinuous: (scale, shift) — scale first.
            let e = temb.silu()?.apply(&self.norm_out)?.chunk(2, 1)?;
            let xs = layer_norm_plain(&xs, 1e-6)?.broadcast_mul(&(&e[0] + 1.0)?)?.broadcast_add(&e[1])?;
            let ys = xs.apply(&self.proj_out)?; // [L or L/U, out]
            let ys = match group {
                Some(g) => g.all_gather(&ys.contiguous()?, 0)?.narrow(0, 0, len)?,
                None => ys,
            };
            outs.push(ys.t()?.reshape((self.cfg.out_channels, nt, nh, nw))?);
        }
        Tensor::stack(&outs, 0)
    }
}

/// Where a rank's dual-stream blocks come from.
pub trait BlockSource: Send + Sync {
    fn num_blocks(&self) -> usize;
    /// Block `i`, ready to run. Sharded sources gather its weights here (a collective: every member
    /// of the group asks for the same blocks in the same order); the caller drops it after use.
    fn block(&self, i: usize) -> Result<Cow<'_, TransformerBlock>>;
}

impl BlockSource for HunyuanVideo15Transformer3DModel {
    fn num_blocks(&self) -> usize {
        self.blocks().len()
    }

    fn block(&self, i: usize) -> Result<Cow<'_, TransformerBlock>> {
        match self.blocks().get(i) {
            Some(b) => Ok(Cow::Borrowed(b)),
            None => candle_core::bail!("block {i} of {}", self.blocks().len()),
        }
    }
}
