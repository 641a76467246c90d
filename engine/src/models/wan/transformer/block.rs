//! One Wan DiT block (diffusers `WanTransformerBlock`, DIT 419-504): 6-way modulated
//! self-attention, un-gated cross-attention, modulated FFN.
//!
//! Everything but the attention core is token-local, so `forward` works unchanged on a shard of
//! the sequence given the matching RoPE tables and conditioning rows (`narrow` on both) and a
//! sequence-parallel self-attention backend. Blocks are built one at a time from `blocks.{i}`, so a
//! caller can load, run and drop them individually.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::attention::{Attention, WanAttention};
use super::config::Config;
use super::modulation::{gate, modulation_chunks, scale_shift, TimeConditioning};
use super::norm::Fp32LayerNorm;
use super::rope::RopeTables;

/// `FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, inner: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: candle_nn::linear(dim, inner, vb.pp("net").pp("0").pp("proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.proj)?.gelu()?.apply(&self.out)
    }
}

/// The text (and, for Wan2.1 I2V, image) context of the cross-attention, already embedded.
#[derive(Debug, Clone)]
pub struct CrossContext {
    /// `(B, Lt, D)`.
    pub text: Tensor,
    /// `(B, Li, D)`, Wan2.1 I2V only.
    pub image: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct WanTransformerBlock {
    norm1: Fp32LayerNorm,
    attn1: WanAttention,
    attn2: WanAttention,
    /// Affine when `cross_attn_norm`, identity otherwise.
    norm2: Option<Fp32LayerNorm>,
    ffn: FeedForward,
    norm3: Fp32LayerNorm,
    /// `(1, 6, D)` f32: shift, scale, gate, c_shift, c_scale, c_gate.
    scale_shift_table: Tensor,
}

impl WanTransformerBlock {
    /// Builds block `i` from `vb.pp("blocks").pp(i)`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let heads = cfg.num_attention_heads;
        let norm2 = if cfg.cross_attn_norm { Some(Fp32LayerNorm::affine(dim, cfg.eps, vb.pp("norm2"))?) } else { None };
        Ok(Self {
            norm1: Fp32LayerNorm::no_affine(cfg.eps),
            attn1: WanAttention::new(dim, heads, cfg.eps, None, vb.pp("attn1"))?,
            attn2: WanAttention::new(dim, heads, cfg.eps, cfg.added_kv_proj_dim, vb.pp("attn2"))?,
            norm2,
            ffn: FeedForward::new(dim, cfg.ffn_dim, vb.pp("ffn"))?,
            norm3: Fp32LayerNorm::no_affine(cfg.eps),
            scale_shift_table: vb.clone().set_dtype(DType::F32).get((1, 6, dim), "scale_shift_table")?,
        })
    }

    /// `xs` `(B, L, D)` in the run dtype (L may be a shard of the sequence; `rope` and `time` must
    /// cover the same tokens). Residual adds follow diffusers: f32 for the gated self-attention and
    /// FFN branches, a plain run-dtype add for the cross-attention.
    pub fn forward(
        &self,
        xs: &Tensor,
        context: &CrossContext,
        time: &TimeConditioning,
        rope: &RopeTables,
        attention: Attention<'_>,
    ) -> Result<Tensor> {
        let dtype = xs.dtype();
        let runs = &time.runs;
        let m = modulation_chunks(&self.scale_shift_table, &time.proj)?;
        let (shift, scale, gate_msa, c_shift, c_scale, c_gate) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);

        // 1. Self-attention.
        let normed = scale_shift(runs, &self.norm1.forward(xs)?, scale, shift)?.to_dtype(dtype)?;
        let attn = self.attn1.forward_self(&normed, rope, attention.self_attn)?;
        let xs = (xs.to_dtype(DType::F32)? + gate(runs, &attn.to_dtype(DType::F32)?, gate_msa)?)?.to_dtype(dtype)?;

        // 2. Cross-attention (no modulation, no gate).
        let normed = match &self.norm2 {
            Some(norm) => norm.forward(&xs)?.to_dtype(dtype)?,
            None => xs.clone(),
        };
        let attn = self.attn2.forward_cross(&normed, &context.text, context.image.as_ref(), attention.cross_attn)?;
        let xs = (xs + attn)?;

        // 3. Feed-forward.
        let normed = scale_shift(runs, &self.norm3.forward(&xs)?, c_scale, c_shift)?.to_dtype(dtype)?;
        let ff = self.ffn.forward(&normed)?;
        (xs.to_dtype(DType::F32)? + gate(runs, &ff.to_dtype(DType::F32)?, c_gate)?)?.to_dtype(dtype)
    }
}
