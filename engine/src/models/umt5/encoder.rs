//! `UMT5EncoderModel`: token embedding → `num_layers` blocks → final RMSNorm, returning
//! `last_hidden_state`.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::attention::{AttentionInputs, RmsNorm};
use super::block::UMT5Block;
use super::config::Config;

/// The checkpoint names the embedding may have: transformers ties `encoder.embed_tokens` to
/// `shared`, and checkpoints hold one, the other or both.
pub const EMBEDDING_NAMES: [&str; 2] = ["shared.weight", "encoder.embed_tokens.weight"];

#[derive(Debug, Clone)]
pub struct UMT5EncoderModel {
    embed_tokens: Embedding,
    blocks: Vec<UMT5Block>,
    final_layer_norm: RmsNorm,
    cfg: Config,
    span: tracing::Span,
}

impl UMT5EncoderModel {
    /// Builds the whole encoder from the checkpoint root `vb` (keys `shared.weight`,
    /// `encoder.block.{i}.…`, `encoder.final_layer_norm.weight`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embed_tokens = embedding(cfg, &vb)?;
        let vb_blocks = vb.pp("encoder").pp("block");
        let blocks = (0..cfg.num_layers).map(|i| UMT5Block::new(cfg, vb_blocks.pp(i))).collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            RmsNorm::new(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("encoder").pp("final_layer_norm"))?;
        Ok(Self {
            embed_tokens,
            blocks,
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
        let xs = self.forward_blocks(&xs, &inputs, 0..self.blocks.len())?;
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
        if layers.end > self.blocks.len() || layers.start > layers.end {
            candle_core::bail!("layer range {layers:?} is outside 0..{}", self.blocks.len())
        }
        let mut xs = xs.clone();
        for block in &self.blocks[layers] {
            xs = block.forward(&xs, inputs)?;
        }
        Ok(xs)
    }

    /// `encoder.final_layer_norm`, returned in f32.
    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(xs)?.to_dtype(DType::F32)
    }
}

/// The token embedding under whichever of [`EMBEDDING_NAMES`] the checkpoint holds.
pub fn embedding(cfg: &Config, vb: &VarBuilder) -> Result<Embedding> {
    let Some(name) = EMBEDDING_NAMES.iter().find(|n| vb.contains_tensor(n)) else {
        candle_core::bail!("the text encoder checkpoint has no token embedding (looked for {EMBEDDING_NAMES:?})")
    };
    Ok(Embedding::new(vb.get((cfg.vocab_size, cfg.d_model), name)?, cfg.d_model))
}
