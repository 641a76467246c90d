//! UMT5 / T5 self-attention: no `1/√d` scaling (Mesh-TensorFlow folds it into the init), no biases,
//! and a learned bias indexed by bucketed relative position (UMT5: every layer's own; T5: layer 0's,
//! shared by all layers), plus the key padding mask.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::config::Config;

/// What every layer's attention needs besides its input, computed once per forward: the
/// relative-position bucket of each (query, key) pair and the additive key mask.
#[derive(Debug, Clone)]
pub struct AttentionInputs {
    /// `(q_len, k_len)` u32 bucket indices into each layer's `relative_attention_bias`.
    pub buckets: Tensor,
    /// `(b, 1, 1, k_len)` f32: 0 for real tokens, `f32::MIN` for padding; `None` = all real.
    pub mask: Option<Tensor>,
}

impl AttentionInputs {
    /// Buckets for a bidirectional `seq_len × seq_len` attention and the mask from a `(b, seq_len)`
    /// attention mask (1 = token, 0 = padding; any dtype).
    pub fn new(cfg: &Config, seq_len: usize, attention_mask: Option<&Tensor>, device: &Device) -> Result<Self> {
        let buckets =
            relative_position_buckets(seq_len, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance);
        let buckets = Tensor::from_vec(buckets, (seq_len, seq_len), device)?;
        let mask = match attention_mask {
            None => None,
            Some(m) => {
                let (b, t) = m.dims2()?;
                if t != seq_len {
                    candle_core::bail!("attention mask {:?} does not match sequence length {seq_len}", m.shape())
                }
                // transformers adds (1 − mask)·finfo.min; a finite minimum (not −∞) keeps a fully
                // padded row finite.
                let m = m.to_dtype(DType::F32)?.affine(-1.0, 1.0)?.affine(f32::MIN as f64, 0.0)?;
                Some(m.reshape((b, 1, 1, t))?)
            }
        };
        Ok(Self { buckets, mask })
    }
}

/// T5's bidirectional bucketing of `key_pos − query_pos`, row-major `(q, k)`. Half of the buckets
/// are for keys after the query; within each half, offsets below `max_exact` get their own bucket
/// and larger ones share log-spaced buckets up to `max_distance`. The log is taken in float32
/// exactly like the torch code, so boundary offsets round the same way.
pub fn relative_position_buckets(seq_len: usize, num_buckets: usize, max_distance: usize) -> Vec<u32> {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let bucket = |rel: i64| -> u32 {
        let mut b = if rel > 0 { half } else { 0 };
        let n = rel.unsigned_abs() as usize;
        b += if n < max_exact {
            n
        } else {
            let scaled = (n as f32 / max_exact as f32).ln() / log_range * (half - max_exact) as f32;
            (max_exact + scaled as usize).min(half - 1)
        };
        b as u32
    };
    let mut out = Vec::with_capacity(seq_len * seq_len);
    for q in 0..seq_len as i64 {
        for k in 0..seq_len as i64 {
            out.push(bucket(k - q));
        }
    }
    out
}

/// `layer.0.SelfAttention` of one block.
#[derive(Debug, Clone)]
pub struct UMT5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `None` for T5 layers after the first (they take layer 0's bias).
    relative_attention_bias: Option<Embedding>,
    num_heads: usize,
    d_kv: usize,
    span: tracing::Span,
}

/// `relative_attention_bias.weight` `[buckets, heads]` under `vb` as an embedding.
pub fn relative_bias_table(cfg: &Config, vb: &VarBuilder) -> Result<Embedding> {
    let bias = vb.get((cfg.relative_attention_num_buckets, cfg.num_heads), "relative_attention_bias.weight")?;
    Ok(Embedding::new(bias, cfg.num_heads))
}

/// The additive bias `(1, h, q, k)` of `table` for the `(q, k)` `buckets`.
pub fn position_bias(table: &Embedding, buckets: &Tensor) -> Result<Tensor> {
    // (t, t, h) -> (1, h, t, t)
    table.forward(buckets)?.permute((2, 0, 1))?.unsqueeze(0)
}

impl UMT5Attention {
    /// `has_bias`: this layer holds `relative_attention_bias` (every UMT5 layer; T5 layer 0 only).
    pub fn new(cfg: &Config, has_bias: bool, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.inner_dim();
        let relative_attention_bias = has_bias.then(|| relative_bias_table(cfg, &vb)).transpose()?;
        Ok(Self {
            q: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: candle_nn::linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            relative_attention_bias,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            span: tracing::span!(tracing::Level::TRACE, "umt5-attn"),
        })
    }

    /// `xs`: `(b, t, d_model)` already RMS-normed, in the weights' dtype. `shared_bias`: layer 0's
    /// `(1, h, t, t)` bias for a T5 layer without its own (ignored when the layer has one).
    pub fn forward(&self, xs: &Tensor, inputs: &AttentionInputs, shared_bias: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, t, _) = xs.dims3()?;
        let (bq, bk) = inputs.buckets.dims2()?;
        if (bq, bk) != (t, t) {
            candle_core::bail!(
                "relative-position buckets {:?} do not match sequence length {t}",
                inputs.buckets.shape()
            )
        }
        let heads = |proj: &Linear| -> Result<Tensor> {
            // (b, t, h·d) -> (b, h, t, d)
            proj.forward(xs)?.reshape((b, t, self.num_heads, self.d_kv))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (heads(&self.q)?, heads(&self.k)?, heads(&self.v)?);
        let scores = q.matmul(&k.t()?)?; // (b, h, t, t)
        let bias = match (&self.relative_attention_bias, shared_bias) {
            (Some(table), _) => position_bias(table, &inputs.buckets)?,
            (None, Some(shared)) => shared.clone(),
            (None, None) => candle_core::bail!("a T5 layer without its own relative bias needs layer 0's"),
        };
        // Softmax in f32 as transformers does (`softmax(scores.float())`), bias and mask added there.
        let mut scores = scores.to_dtype(DType::F32)?.broadcast_add(&bias.to_dtype(DType::F32)?)?;
        if let Some(mask) = &inputs.mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let ctx = weights.matmul(&v)?; // (b, h, t, d)
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, self.num_heads * self.d_kv))?; // (b, t, h·d)
        self.o.forward(&ctx)
    }
}

/// T5's RMSNorm: variance in f32, no mean subtraction, no bias; the normalised activations are cast
/// to the weight's dtype before the scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, eps })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.to_dtype(DType::F32)?;
        let inv_rms = xs.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, self.eps)?.sqrt()?.recip()?;
        xs.broadcast_mul(&inv_rms)?.to_dtype(self.weight.dtype())?.broadcast_mul(&self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // transformers UMT5Attention._relative_position_bucket (bidirectional, 32 buckets,
        // max_distance 128) for key_pos − query_pos = -200, -128, -40, -16, -9, -8, -7, -1, 0, 1, 7,
        // 8, 15, 16, 31, 32, 64, 127, 128, 500:
        //   [15, 15, 12, 10, 8, 8, 7, 1, 0, 17, 23, 24, 25, 26, 27, 28, 30, 31, 31, 31]
        let rels = [-200i64, -128, -40, -16, -9, -8, -7, -1, 0, 1, 7, 8, 15, 16, 31, 32, 64, 127, 128, 500];
        let expected = [15u32, 15, 12, 10, 8, 8, 7, 1, 0, 17, 23, 24, 25, 26, 27, 28, 30, 31, 31, 31];
        // Row 0 of a long sequence holds positive offsets, the last row negative ones.
        let len = 501;
        let table = relative_position_buckets(len, 32, 128);
        for (rel, want) in rels.iter().zip(expected) {
            let got =
                if *rel >= 0 { table[*rel as usize] } else { table[(len - 1) * len + (len as i64 - 1 + rel) as usize] };
            assert_eq!(got, want, "offset {rel}");
        }
    }
}
