//! The conditioning stems: timestep embedding (+ the meanflow `timestep_r` twin), the MLLM token
//! refiner, the ByT5 glyph and SigLIP image projections, and the 3-axis RoPE tables of the video
//! tokens. Every text stream arrives *trimmed* (valid tokens only): diffusers' masks only ever keep
//! valid rows away from padded ones, so dropping the padded rows gives the same numbers.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{layer_norm, linear, LayerNorm, LayerNormConfig, Linear, VarBuilder};

use super::config::Config;
use crate::models::wan::transformer::attention::{AttentionBackend, ChunkedAttention};
use crate::models::wan::transformer::embeddings::{timestep_sinusoid, TimestepEmbedding};
use crate::models::wan::transformer::rope::RopeTables;

/// `LayerNorm(elementwise_affine=False)` over the last dim.
pub fn layer_norm_plain(xs: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let xc = xs.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// An affine `nn.LayerNorm(dim, eps)`.
pub fn affine_layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(dim, LayerNormConfig { eps, ..Default::default() }, vb)
}

/// `[L, H·d]` → `[1, H, L, d]`.
pub fn heads(xs: &Tensor, h: usize) -> Result<Tensor> {
    let (l, hd) = xs.dims2()?;
    xs.reshape((1, l, h, hd / h))?.transpose(1, 2)?.contiguous()
}

/// `[1, H, L, d]` → `[L, H·d]`.
pub fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (_, h, l, d) = xs.dims4()?;
    xs.transpose(1, 2)?.reshape((l, h * d))
}

/// `HunyuanVideo15TimeEmbedding`: `TimestepEmbedding(sinusoid_256(t))`, plus the same of
/// `timestep_r` through `timestep_embedder_r` for meanflow (step-distilled) models.
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    timestep_embedder: TimestepEmbedding,
    timestep_embedder_r: Option<TimestepEmbedding>,
}

impl TimeEmbedding {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(256, d, vb.pp("timestep_embedder"))?,
            timestep_embedder_r: cfg
                .use_meanflow
                .then(|| TimestepEmbedding::new(256, d, vb.pp("timestep_embedder_r")))
                .transpose()?,
        })
    }

    /// `t` `[1]` (and `t_r` `[1]`, meanflow models only) → `[1, D]`.
    pub fn forward(&self, t: &Tensor, t_r: Option<&Tensor>) -> Result<Tensor> {
        let emb = self.timestep_embedder.forward(&timestep_sinusoid(t, 256)?)?;
        match (t_r, &self.timestep_embedder_r) {
            (None, _) => Ok(emb),
            (Some(r), Some(e)) => emb + e.forward(&timestep_sinusoid(r, 256)?)?,
            (Some(_), None) => {
                candle_core::bail!("timestep_r given but this model has no meanflow embedder (use_meanflow false)")
            }
        }
    }
}

/// Plain multi-head self-attention with biases (`Attention` + `AttnProcessor2_0`), no masks: the
/// refiner sees its valid tokens only.
#[derive(Debug, Clone)]
struct SelfAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            to_q: linear(d, d, vb.pp("to_q"))?,
            to_k: linear(d, d, vb.pp("to_k"))?,
            to_v: linear(d, d, vb.pp("to_v"))?,
            to_out: linear(d, d, vb.pp("to_out.0"))?,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.heads;
        let (q, k, v) =
            (heads(&xs.apply(&self.to_q)?, h)?, heads(&xs.apply(&self.to_k)?, h)?, heads(&xs.apply(&self.to_v)?, h)?);
        merge_heads(&ChunkedAttention::default().attend(&q, &k, &v)?)?.apply(&self.to_out)
    }
}

/// `HunyuanVideo15IndividualTokenRefinerBlock`.
#[derive(Debug, Clone)]
struct RefinerBlock {
    norm1: LayerNorm,
    attn: SelfAttention,
    norm2: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    norm_out: Linear,
}

impl RefinerBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        let ff = cfg.ff_dim();
        Ok(Self {
            norm1: affine_layer_norm(d, 1e-6, vb.pp("norm1"))?,
            attn: SelfAttention::new(d, cfg.num_attention_heads, vb.pp("attn"))?,
            norm2: affine_layer_norm(d, 1e-6, vb.pp("norm2"))?,
            ff_in: linear(d, ff, vb.pp("ff.net.0.proj"))?,
            ff_out: linear(ff, d, vb.pp("ff.net.2"))?,
            norm_out: linear(d, 2 * d, vb.pp("norm_out.linear"))?,
        })
    }

    /// `xs` `[N, D]`, `temb` `[1, D]`.
    fn forward(&self, xs: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let gates = temb.silu()?.apply(&self.norm_out)?.chunk(2, 1)?;
        let attn = self.attn.forward(&xs.apply(&self.norm1)?)?;
        let xs = (xs + attn.broadcast_mul(&gates[0])?)?;
        // FeedForward(activation_fn="linear-silu"): Linear then SiLU, then Linear.
        let ff = xs.apply(&self.norm2)?.apply(&self.ff_in)?.silu()?.apply(&self.ff_out)?;
        xs + ff.broadcast_mul(&gates[1])?
    }
}

/// `HunyuanVideo15TokenRefiner` (`context_embedder`): projects the MLLM states and refines them,
/// modulated by the *raw* timestep's embedding plus the projected mean of the text states.
#[derive(Debug, Clone)]
pub struct TokenRefiner {
    timestep_embedder: TimestepEmbedding,
    text_1: Linear,
    text_2: Linear,
    proj_in: Linear,
    blocks: Vec<RefinerBlock>,
}

impl TokenRefiner {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, text) = (cfg.inner_dim(), cfg.text_embed_dim);
        let tte = vb.pp("time_text_embed");
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(256, d, tte.pp("timestep_embedder"))?,
            // PixArtAlphaTextProjection(act_fn="silu").
            text_1: linear(text, d, tte.pp("text_embedder.linear_1"))?,
            text_2: linear(d, d, tte.pp("text_embedder.linear_2"))?,
            proj_in: linear(text, d, vb.pp("proj_in"))?,
            blocks: (0..cfg.num_refiner_layers)
                .map(|i| RefinerBlock::new(cfg, vb.pp(format!("token_refiner.refiner_blocks.{i}"))))
                .collect::<Result<_>>()?,
        })
    }

    /// The valid MLLM states `[N, text_dim]` (N ≥ 1) at timestep `t` `[1]` → `[N, D]`.
    pub fn forward(&self, text: &Tensor, t: &Tensor) -> Result<Tensor> {
        let pooled = text.mean_keepdim(0)?;
        let temb = (self.timestep_embedder.forward(&timestep_sinusoid(t, 256)?)?
            + pooled.apply(&self.text_1)?.silu()?.apply(&self.text_2)?)?;
        let mut xs = text.apply(&self.proj_in)?;
        for b in &self.blocks {
            xs = b.forward(&xs, &temb)?;
        }
        Ok(xs)
    }
}

/// `HunyuanVideo15ByT5TextProjection` (`context_embedder_2`): LN → Linear → GELU → Linear → GELU →
/// Linear (exact GELU, LN eps 1e-5).
#[derive(Debug, Clone)]
pub struct GlyphProjection {
    norm: LayerNorm,
    linear_1: Linear,
    linear_2: Linear,
    linear_3: Linear,
}

impl GlyphProjection {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (i, h) = (cfg.text_embed_2_dim, cfg.glyph_hidden_dim);
        Ok(Self {
            norm: affine_layer_norm(i, 1e-5, vb.pp("norm"))?,
            linear_1: linear(i, h, vb.pp("linear_1"))?,
            linear_2: linear(h, h, vb.pp("linear_2"))?,
            linear_3: linear(h, cfg.inner_dim(), vb.pp("linear_3"))?,
        })
    }
}

impl Module for GlyphProjection {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.norm)?
            .apply(&self.linear_1)?
            .gelu_erf()?
            .apply(&self.linear_2)?
            .gelu_erf()?
            .apply(&self.linear_3)
    }
}

/// `HunyuanVideo15ImageProjection` (`image_embedder`): LN → Linear → GELU → Linear → LN.
#[derive(Debug, Clone)]
pub struct ImageProjection {
    norm_in: LayerNorm,
    linear_1: Linear,
    linear_2: Linear,
    norm_out: LayerNorm,
}

impl ImageProjection {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (i, d) = (cfg.image_embed_dim, cfg.inner_dim());
        Ok(Self {
            norm_in: affine_layer_norm(i, 1e-5, vb.pp("norm_in"))?,
            linear_1: linear(i, i, vb.pp("linear_1"))?,
            linear_2: linear(i, d, vb.pp("linear_2"))?,
            norm_out: affine_layer_norm(d, 1e-5, vb.pp("norm_out"))?,
        })
    }
}

impl Module for ImageProjection {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.norm_in)?.apply(&self.linear_1)?.gelu_erf()?.apply(&self.linear_2)?.apply(&self.norm_out)
    }
}

/// `HunyuanVideo15RotaryPosEmbed` for a `(T, H, W)` grid: per axis `i` of width `d_i`, pair `j`
/// rotates by `pos_i · θ^(−2j/d_i)` (f32 as diffusers computes it); tokens in (t, h, w) order.
pub fn rope_tables(cfg: &Config, grid: (usize, usize, usize), device: &Device) -> Result<RopeTables> {
    let (nt, nh, nw) = grid;
    let theta = cfg.rope_theta as f32;
    let freqs: Vec<Vec<f32>> = cfg
        .rope_axes_dim
        .iter()
        .map(|&d| (0..d / 2).map(|j| 1.0 / theta.powf((2 * j) as f32 / d as f32)).collect())
        .collect();
    let pairs: usize = cfg.rope_axes_dim.iter().sum::<usize>() / 2;
    let len = nt * nh * nw;
    let (mut cos, mut sin) = (Vec::with_capacity(len * pairs), Vec::with_capacity(len * pairs));
    for t in 0..nt {
        for h in 0..nh {
            for w in 0..nw {
                for (axis, pos) in [t, h, w].into_iter().enumerate() {
                    for f in &freqs[axis] {
                        let angle = pos as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
    }
    Ok(RopeTables {
        cos: Tensor::from_vec(cos, (len, pairs), device)?,
        sin: Tensor::from_vec(sin, (len, pairs), device)?,
    })
}

/// `[1, D]`-row lookups of `cond_type_embed` (0 text, 1 glyph, 2 image).
pub fn cond_type(table: &Tensor, kind: usize) -> Result<Tensor> {
    table.narrow(0, kind, 1)?.to_dtype(DType::F32)
}
