//! Qwen2.5-VL's language model (`Qwen2_5_VLTextModel`), the HunyuanVideo 1.5 MLLM text encoder,
//! exact to transformers 5.24 (`models/qwen2_5_vl/modeling_qwen2_5_vl.py`), text only.
//!
//! - [`config`]: `text_encoder/config.json` (both RoPE config styles).
//! - [`model`]: embedding, decoder layers, hidden-state selection (`hidden_states[-3]`);
//!   [`Qwen25VlLayers`] holds any contiguous run of layers, so a caller can hold only some of them
//!   (split by layer over ranks, `text::hv15_sharded`).

pub mod config;
pub mod model;

pub use config::Config;
pub use model::{checkpoint_root, Qwen25VlLayers, Qwen25VlTextModel, Rope, TokenEmbedding};

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::weights::{self, Checkpoint, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum TextModelLoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("invalid text encoder config in {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("text encoder weights in {path} do not match its config.json: {msg}")]
    Mismatch { path: String, msg: String },
}

/// The text model folder `dir`: its checked `config.json` and a builder over its safetensors (every
/// file's header checked; a tensor is read only when a module asks for it).
pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<(Config, VarBuilder<'static>), TextModelLoadError> {
    let cfg: Config = weights::load_config(dir)?;
    cfg.validate().map_err(|msg| TextModelLoadError::Config { path: dir.display().to_string(), msg })?;
    Ok((cfg, Checkpoint::open(dir)?.var_builder(dtype, device)?))
}

/// A module of `dir`'s model failed to build: the weights do not match its config.
pub fn mismatch(dir: &Path, e: candle_core::Error) -> TextModelLoadError {
    TextModelLoadError::Mismatch { path: dir.display().to_string(), msg: e.to_string() }
}

/// Loads the text model folder `dir` (`config.json` and safetensors).
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Qwen25VlTextModel, TextModelLoadError> {
    let (cfg, vb) = open(dir, dtype, device)?;
    Qwen25VlTextModel::new(&cfg, vb).map_err(|e| mismatch(dir, e))
}
