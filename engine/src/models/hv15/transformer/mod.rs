//! HunyuanVideo 1.5 DiT (`HunyuanVideo15Transformer3DModel`), exact to diffusers 0.42.1
//! (`models/transformers/transformer_hunyuan_video15.py`).
//!
//! - [`config`]: `config.json` (defaults = the released 8.3B models).
//! - [`embeddings`]: timestep (+ meanflow) embedding, MLLM token refiner, glyph/image projections,
//!   RoPE tables.
//! - [`block`]: the dual-stream block with its joint attention.
//! - [`ulysses`]: the joint attention seam, on one device or sequence-parallel (Ulysses).
//! - [`model`]: the whole forward, with the context streams trimmed to their valid tokens, on one
//!   device or with the video tokens sharded over a Ulysses group.
//! - [`sharded`]: the model as one rank of a parallel plan runs it (blocks resident or FSDP-sharded,
//!   video tokens over a Ulysses group).
//!
//! Shared with the Wan DiT: the timestep sinusoid and `TimestepEmbedding`, the chunked attention
//! core behind `AttentionBackend` (so the Ulysses backend can wrap it), and `RopeTables`.

pub mod block;
pub mod config;
pub mod embeddings;
pub mod model;
pub mod sharded;
pub mod ulysses;

pub use config::Config;
pub use model::{valid_rows, Context, HunyuanVideo15Transformer3DModel};
pub use sharded::Hv15ShardedTransformer;

use std::path::Path;

use candle_core::{DType, Device};

use crate::weights::{self, Checkpoint, WeightsError};

/// Errors loading a transformer folder.
#[derive(Debug, thiserror::Error)]
pub enum TransformerLoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("invalid transformer config in {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("transformer weights in {path} do not match its config.json: {msg}")]
    Mismatch { path: String, msg: String },
}

/// Loads the transformer folder `dir` (its `config.json` and safetensors, sharded or not).
pub fn load(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<HunyuanVideo15Transformer3DModel, TransformerLoadError> {
    let cfg: Config = weights::load_config(dir)?;
    let path = dir.display().to_string();
    cfg.validate().map_err(|msg| TransformerLoadError::Config { path: path.clone(), msg })?;
    let vb = Checkpoint::open(dir)?.var_builder(dtype, device)?;
    HunyuanVideo15Transformer3DModel::new(&cfg, vb)
        .map_err(|e| TransformerLoadError::Mismatch { path, msg: e.to_string() })
}
