//! `Qwen2_5_VLTextModel` (transformers `modeling_qwen2_5_vl.py`): token embedding, decoder layers
//! (RMSNorm → GQA self-attention with q/k/v biases and RoPE → RMSNorm → SwiGLU MLP), final norm.
//!
//! Text only, one unpadded sequence at a time: positions are `arange` (transformers does not derive
//! them from the mask) and attention is causal, so a right-padded row's valid tokens equal the
//! unpadded run; text-only mRoPE (three equal position rows) is plain 1-D RoPE with cos/sin in f32.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, linear, linear_no_bias, rms_norm, Embedding, Linear, RmsNorm, VarBuilder};

use super::config::Config;

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Self {
            q_proj: linear(h, nh * hd, vb.pp("q_proj"))?,
            k_proj: linear(h, nkv * hd, vb.pp("k_proj"))?,
            v_proj: linear(h, nkv * hd, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(nh * hd, h, vb.pp("o_proj"))?,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// `xs` `[N, H]`, RoPE `cos`/`sin` `[N, hd/2]`, causal.
    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let n = xs.dim(0)?;
        let split = |x: Tensor, h: usize| x.reshape((1, n, h, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(xs.apply(&self.q_proj)?, self.heads)?;
        let k = split(xs.apply(&self.k_proj)?, self.kv_heads)?;
        let v = split(xs.apply(&self.v_proj)?, self.kv_heads)?;
        // rotate_half RoPE (not interleaved), computed in f32.
        let dtype = q.dtype();
        let q = candle_nn::rotary_emb::rope(&q.to_dtype(DType::F32)?, cos, sin)?.to_dtype(dtype)?;
        let k = candle_nn::rotary_emb::rope(&k.to_dtype(DType::F32)?, cos, sin)?.to_dtype(dtype)?;
        // GQA: query head i reads key/value head i / (heads / kv_heads).
        let rep = self.heads / self.kv_heads;
        let repeat = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            x.unsqueeze(2)?.broadcast_as((1, self.kv_heads, rep, n, self.head_dim))?.reshape((
                1,
                self.heads,
                n,
                self.head_dim,
            ))
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (self.head_dim as f64).sqrt()))?;
        let mask: Vec<f32> =
            (0..n).flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (n, n), xs.device())?.to_dtype(scores.dtype())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((n, self.heads * self.head_dim))?.apply(&self.o_proj)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        (xs.apply(&self.gate_proj)?.silu()? * xs.apply(&self.up_proj)?)?.apply(&self.down_proj)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: rms_norm(h, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: rms_norm(h, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp {
                gate_proj: linear_no_bias(h, i, vb.pp("mlp.gate_proj"))?,
                up_proj: linear_no_bias(h, i, vb.pp("mlp.up_proj"))?,
                down_proj: linear_no_bias(i, h, vb.pp("mlp.down_proj"))?,
            },
        })
    }

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let h = (xs + self.self_attn.forward(&xs.apply(&self.input_layernorm)?, cos, sin)?)?;
        &h + h.apply(&self.post_attention_layernorm)?.apply(&self.mlp)?
    }
}

/// The text model's `VarBuilder` root: keys without a prefix, as `Qwen2_5_VLTextModel.save_pretrained`
/// writes them, or under the `model.` / `language_model.` prefix of the full VL checkpoints.
pub fn checkpoint_root(vb: VarBuilder) -> VarBuilder {
    ["", "model", "language_model"]
        .into_iter()
        .map(|p| if p.is_empty() { vb.clone() } else { vb.pp(p) })
        .find(|v| v.contains_tensor("embed_tokens.weight"))
        .unwrap_or(vb)
}

/// `embed_tokens`, checked against the vocabulary: an id past it means the tokenizer and the
/// weights are not one model, which candle's gather would report only as an index error.
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    embed_tokens: Embedding,
    vocab_size: usize,
}

impl TokenEmbedding {
    /// `embed_tokens.weight` under the [`checkpoint_root`] `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            embed_tokens: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?,
            vocab_size: cfg.vocab_size,
        })
    }

    /// `[N, H]` in the weights' dtype for the ids of one unpadded sequence.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            candle_core::bail!("the text encoder needs at least one token");
        }
        if let Some(id) = ids.iter().find(|id| **id as usize >= self.vocab_size) {
            candle_core::bail!(
                "token id {id} is outside the text encoder's vocabulary of {} (tokenizer/ and text_encoder/ do not match)",
                self.vocab_size
            );
        }
        self.embed_tokens.forward(&Tensor::new(ids, self.embed_tokens.embeddings().device())?)
    }
}

/// RoPE cos/sin `[N, hd/2]` for positions `0..N` (f32, as transformers builds them).
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &Config, n: usize, device: &Device) -> Result<Self> {
        let hd = cfg.head_dim();
        let theta = cfg.theta() as f32;
        let inv: Vec<f32> = (0..hd / 2).map(|j| 1.0 / theta.powf((2 * j) as f32 / hd as f32)).collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
        let pos = Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F32)?.reshape((n, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// Positions covered.
    pub fn positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// Decoder layers `range` of the text model (`layers.{i}`), a contiguous run: the whole stack on one
/// device, or one rank's share when the model is split by layer (`text::hv15_sharded`).
#[derive(Debug, Clone)]
pub struct Qwen25VlLayers {
    range: Range<usize>,
    layers: Vec<DecoderLayer>,
    hidden_size: usize,
}

impl Qwen25VlLayers {
    /// Builds `layers.{i}` for `i` in `range` from the [`checkpoint_root`] `vb`.
    pub fn new(cfg: &Config, vb: &VarBuilder, range: Range<usize>) -> Result<Self> {
        if range.end > cfg.num_hidden_layers || range.start > range.end {
            candle_core::bail!("layer range {range:?} is outside 0..{}", cfg.num_hidden_layers)
        }
        let layers =
            range.clone().map(|i| DecoderLayer::new(cfg, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self { range, layers, hidden_size: cfg.hidden_size })
    }

    /// The layer indices held.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Runs every held layer, in order.
    pub fn forward(&self, xs: &Tensor, rope: &Rope) -> Result<Tensor> {
        self.forward_range(xs, rope, self.range())
    }

    /// Runs the held layers `layers` (absolute indices, within [`Self::range`]) over `xs` `[N, H]`.
    pub fn forward_range(&self, xs: &Tensor, rope: &Rope, layers: Range<usize>) -> Result<Tensor> {
        if layers.start < self.range.start || layers.end > self.range.end || layers.start > layers.end {
            candle_core::bail!("layer range {layers:?} is not within the held layers {:?}", self.range)
        }
        match xs.dims() {
            [n, h] if *n == rope.positions() && *h == self.hidden_size => {}
            dims => candle_core::bail!(
                "decoder layers take [{}, {}] (tokens, hidden), got {dims:?}",
                rope.positions(),
                self.hidden_size
            ),
        }
        let held = &self.layers[layers.start - self.range.start..layers.end - self.range.start];
        held.iter().try_fold(xs.clone(), |xs, layer| layer.forward(&xs, &rope.cos, &rope.sin))
    }
}

#[derive(Debug, Clone)]
pub struct Qwen25VlTextModel {
    cfg: Config,
    embed_tokens: TokenEmbedding,
    layers: Qwen25VlLayers,
    norm: RmsNorm,
}

impl Qwen25VlTextModel {
    /// Builds the whole model from `vb` (see [`checkpoint_root`] for the key prefixes found).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let vb = checkpoint_root(vb);
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens: TokenEmbedding::new(cfg, vb.clone())?,
            layers: Qwen25VlLayers::new(cfg, &vb, 0..cfg.num_hidden_layers)?,
            norm: rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `hidden_states` of one unpadded sequence: `[0]` the embeddings, `[i]` after decoder layer
    /// `i` for `i ≤ layers` (no final norm), each `[N, H]`. HunyuanVideo 1.5 takes
    /// `hidden_states[-3]` = `hidden(ids, num_hidden_layers − 2)`; later layers never run.
    pub fn hidden(&self, ids: &[u32], layers: usize) -> Result<Tensor> {
        if layers > self.cfg.num_hidden_layers {
            candle_core::bail!("hidden state after layer {layers} of a {}-layer model", self.cfg.num_hidden_layers);
        }
        let xs = self.embed_tokens.forward(ids)?;
        let rope = Rope::new(&self.cfg, ids.len(), xs.device())?;
        self.layers.forward_range(&xs, &rope, 0..layers)
    }

    /// `last_hidden_state`: every layer, then the final norm.
    pub fn last_hidden_state(&self, ids: &[u32]) -> Result<Tensor> {
        self.hidden(ids, self.cfg.num_hidden_layers)?.apply(&self.norm)
    }

    /// `hidden_states[-(skip + 1)]`: the output after `num_hidden_layers − skip` layers (the
    /// pipeline's `num_hidden_layers_to_skip = 2`).
    pub fn hidden_skipping(&self, ids: &[u32], skip: usize) -> Result<Tensor> {
        self.hidden(ids, self.cfg.num_hidden_layers.saturating_sub(skip))
    }
}
