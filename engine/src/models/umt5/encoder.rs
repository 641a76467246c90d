//! `UMT5EncoderModel` (and transformers' `T5EncoderModel`, e.g. ByT5): token embedding →
//! `num_layers` blocks → final RMSNorm, returning `last_hidden_state`.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::attention::{position_bias, relative_bias_table, AttentionInputs, RmsNorm};
use super::block::UMT5Block;
use super::config::Config;

/// The checkpoint names the embedding may have: transformers ties `encoder.embed_tokens` to
/// `shared`, and checkpoints hold one, the other or both.
pub const EMBEDDING_NAMES: [&str; 2] = ["shared.weight", "encoder.embed_tokens.weight"];

#[derive(Debug, Clone)]
pub struct UMT5EncoderModel {
    embed_tokens: Embedding,
    layers: UMT5Layers,
    final_layer_norm: RmsNorm,
    cfg: Config,
    span: tracing::Span,
}

impl UMT5EncoderModel {
    /// Builds the whole encoder from the checkpoint root `vb` (keys `shared.weight`,
    /// `encoder.block.{i}.…`, `encoder.final_layer_norm.weight`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embed_tokens = embedding(cfg, &vb)?;
        let layers = UMT5Layers::new(cfg, &vb, 0..cfg.num_layers)?;
        let final_layer_norm =
            RmsNorm::new(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("encoder").pp("final_layer_norm"))?;
        Ok(Self {
            embed_tokens,
            layers,
            final_layer_norm,
            cfg: cfg.clone(),
            span: tracing::span!(tracing::Level::TRACE, "umt5-encoder"),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.embeddings().device()
    }

    /// `last_hidden_state` `(b, t, d_model)` in f32 for `input_ids` `(b, t)` (u32) and an optional
    /// `(b, t)` attention mask (1 = token, 0 = padding).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, t) = input_ids.dims2()?;
        let inputs = AttentionInputs::new(&self.cfg, t, attention_mask, input_ids.device())?;
        let xs = self.embed(input_ids)?;
        let xs = self.layers.forward(&xs, &inputs)?;
        self.final_norm(&xs)
    }

    /// Token embeddings as the f32 residual stream. Ids are checked against the vocabulary so a
    /// mismatched tokenizer fails with a message rather than an index error deep in candle.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let max_id = input_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= self.cfg.vocab_size {
            candle_core::bail!(
                "token id {max_id} is outside the text encoder's vocabulary of {} (tokenizer and text_encoder do not match)",
                self.cfg.vocab_size
            )
        }
        self.embed_tokens.forward(&input_ids)?.to_dtype(DType::F32)
    }

    /// Runs blocks `layers` (a sub-range of `0..num_layers`) over the f32 residual stream.
    pub fn forward_blocks(&self, xs: &Tensor, inputs: &AttentionInputs, layers: Range<usize>) -> Result<Tensor> {
        self.layers.forward_range(xs, inputs, layers)
    }

    /// `encoder.final_layer_norm`, returned in f32.
    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(xs)?.to_dtype(DType::F32)
    }
}

/// A contiguous run of encoder layers, built from the checkpoint root without touching the other
/// layers' weights: what one rank holds when the encoder is split by layer, or what an offloading
/// caller builds one layer at a time.
#[derive(Debug, Clone)]
pub struct UMT5Layers {
    range: Range<usize>,
    blocks: Vec<UMT5Block>,
    /// T5: block 0's relative-bias table, which every layer uses (loaded even when this run of
    /// layers does not start at 0; it is `buckets × heads`, tiny). `None` for UMT5.
    shared_bias: Option<Embedding>,
}

impl UMT5Layers {
    /// Builds `encoder.block.{i}` for `i` in `layers` from the root `vb`.
    pub fn new(cfg: &Config, vb: &VarBuilder, layers: Range<usize>) -> Result<Self> {
        if layers.end > cfg.num_layers || layers.start > layers.end {
            candle_core::bail!("layer range {layers:?} is outside 0..{}", cfg.num_layers)
        }
        let vb_blocks = vb.pp("encoder").pp("block");
        let shared = cfg.shares_relative_bias()?;
        let blocks = layers
            .clone()
            .map(|i| UMT5Block::new(cfg, !shared || i == 0, vb_blocks.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let shared_bias = shared
            .then(|| relative_bias_table(cfg, &vb_blocks.pp(0).pp("layer").pp(0).pp("SelfAttention")))
            .transpose()?;
        Ok(Self { range: layers, blocks, shared_bias })
    }

    /// The layer indices held.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Runs every held layer, in order, over the f32 residual stream.
    pub fn forward(&self, xs: &Tensor, inputs: &AttentionInputs) -> Result<Tensor> {
        self.forward_range(xs, inputs, self.range())
    }

    /// Runs the held layers `layers` (absolute indices, within [`Self::range`]).
    pub fn forward_range(&self, xs: &Tensor, inputs: &AttentionInputs, layers: Range<usize>) -> Result<Tensor> {
        if layers.start < self.range.start || layers.end > self.range.end || layers.start > layers.end {
            candle_core::bail!("layer range {layers:?} is not within the held layers {:?}", self.range)
        }
        let offset = self.range.start;
        // T5: one bias for every layer, computed once (transformers passes layer 0's
        // `position_bias` on to the others).
        let shared = self.shared_bias.as_ref().map(|t| position_bias(t, &inputs.buckets)).transpose()?;
        let mut xs = xs.clone();
        for block in &self.blocks[layers.start - offset..layers.end - offset] {
            xs = block.forward(&xs, inputs, shared.as_ref())?;
        }
        Ok(xs)
    }
}

/// The token embedding under whichever of [`EMBEDDING_NAMES`] the checkpoint holds.
pub fn embedding(cfg: &Config, vb: &VarBuilder) -> Result<Embedding> {
    let Some(name) = EMBEDDING_NAMES.iter().find(|n| vb.contains_tensor(n)) else {
        candle_core::bail!("the text encoder checkpoint has no token embedding (looked for {EMBEDDING_NAMES:?})")
    };
    Ok(Embedding::new(vb.get((cfg.vocab_size, cfg.d_model), name)?, cfg.d_model))
}
