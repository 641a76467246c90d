//! `HunyuanVideo15TransformerBlock`: the dual-stream MMDiT block. Video and context tokens each get
//! AdaLN-zero modulation from the same `temb`, their own q/k/v (per-head RMS norm; RoPE on the video
//! q/k only), one joint attention over `[video, context]`, then their own output projection and
//! GELU(tanh) feed-forward.

use candle_core::{Result, Tensor};
use candle_nn::{linear, rms_norm, Linear, Module, RmsNorm, VarBuilder};

use super::config::Config;
use super::embeddings::{heads, layer_norm_plain, merge_heads};
use super::ulysses::JointAttention;
use crate::models::wan::transformer::rope::RopeTables;

/// One stream's projections inside the joint attention.
#[derive(Debug, Clone)]
struct StreamQkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

impl StreamQkv {
    fn new(d: usize, hd: usize, names: [&str; 5], vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(d, d, vb.pp(names[0]))?,
            k: linear(d, d, vb.pp(names[1]))?,
            v: linear(d, d, vb.pp(names[2]))?,
            norm_q: rms_norm(hd, 1e-6, vb.pp(names[3]))?,
            norm_k: rms_norm(hd, 1e-6, vb.pp(names[4]))?,
        })
    }

    /// `[L, D]` → q, k, v as `[1, H, L, hd]`, q/k RMS-normed per head (and rotated if `rope`).
    fn forward(&self, xs: &Tensor, h: usize, rope: Option<&RopeTables>) -> Result<(Tensor, Tensor, Tensor)> {
        let q = heads(&xs.apply(&self.q)?, h)?.apply(&self.norm_q)?;
        let k = heads(&xs.apply(&self.k)?, h)?.apply(&self.norm_k)?;
        let v = heads(&xs.apply(&self.v)?, h)?;
        match rope {
            Some(r) => Ok((r.apply(&q)?, r.apply(&k)?, v)),
            None => Ok((q, k, v)),
        }
    }
}

/// GELU(tanh) feed-forward (`FeedForward(activation_fn="gelu-approximate")`).
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(d: usize, ff: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { proj: linear(d, ff, vb.pp("net.0.proj"))?, out: linear(ff, d, vb.pp("net.2"))? })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // candle's `gelu` is the tanh approximation.
        xs.apply(&self.proj)?.gelu()?.apply(&self.out)
    }
}

/// The six AdaLN-zero vectors of one stream, each `[1, D]`.
struct Modulation {
    shift_msa: Tensor,
    scale_msa: Tensor,
    gate_msa: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

fn modulation(linear: &Linear, temb: &Tensor) -> Result<Modulation> {
    let c = temb.silu()?.apply(linear)?.chunk(6, 1)?;
    Ok(Modulation {
        shift_msa: c[0].clone(),
        scale_msa: c[1].clone(),
        gate_msa: c[2].clone(),
        shift_mlp: c[3].clone(),
        scale_mlp: c[4].clone(),
        gate_mlp: c[5].clone(),
    })
}

/// `LN(x)·(1 + scale) + shift` (LayerNorm without affine, eps 1e-6).
fn modulate(xs: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    layer_norm_plain(xs, 1e-6)?.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

#[derive(Debug, Clone)]
pub struct TransformerBlock {
    norm1: Linear,
    norm1_context: Linear,
    video: StreamQkv,
    context: StreamQkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
    heads: usize,
}

impl TransformerBlock {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, hd) = (cfg.inner_dim(), cfg.attention_head_dim);
        let attn = vb.pp("attn");
        Ok(Self {
            norm1: linear(d, 6 * d, vb.pp("norm1.linear"))?,
            norm1_context: linear(d, 6 * d, vb.pp("norm1_context.linear"))?,
            video: StreamQkv::new(d, hd, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], &attn)?,
            context: StreamQkv::new(
                d,
                hd,
                ["add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"],
                &attn,
            )?,
            to_out: linear(d, d, attn.pp("to_out.0"))?,
            to_add_out: linear(d, d, attn.pp("to_add_out"))?,
            ff: FeedForward::new(d, cfg.ff_dim(), vb.pp("ff"))?,
            ff_context: FeedForward::new(d, cfg.ff_dim(), vb.pp("ff_context"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// Video tokens `[L, D]`, context tokens `[N, D]` (valid only), `temb` `[1, D]`.
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &Tensor,
        temb: &Tensor,
        rope: &RopeTables,
        attention: &dyn JointAttention,
    ) -> Result<(Tensor, Tensor)> {
        let m = modulation(&self.norm1, temb)?;
        let c = modulation(&self.norm1_context, temb)?;
        let nx = modulate(xs, &m.shift_msa, &m.scale_msa)?;
        let nc = modulate(ctx, &c.shift_msa, &c.scale_msa)?;
        let (q, k, v) = self.video.forward(&nx, self.heads, Some(rope))?;
        let (cq, ck, cv) = self.context.forward(&nc, self.heads, None)?;
        let (ov, oc) = attention.attend([&q, &k, &v], [&cq, &ck, &cv])?;
        let ox = merge_heads(&ov)?.apply(&self.to_out)?;
        let oc = merge_heads(&oc)?.apply(&self.to_add_out)?;
        let xs = (xs + ox.broadcast_mul(&m.gate_msa)?)?;
        let ctx = (ctx + oc.broadcast_mul(&c.gate_msa)?)?;
        let fx = modulate(&xs, &m.shift_mlp, &m.scale_mlp)?.apply(&self.ff)?;
        let fc = modulate(&ctx, &c.shift_mlp, &c.scale_mlp)?.apply(&self.ff_context)?;
        Ok(((xs + fx.broadcast_mul(&m.gate_mlp)?)?, (ctx + fc.broadcast_mul(&c.gate_mlp)?)?))
    }
}
