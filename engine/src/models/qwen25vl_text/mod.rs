//! Qwen2.5-VL's language model (`Qwen2_5_VLTextModel`), the HunyuanVideo 1.5 MLLM text encoder,
//! exact to transformers 5.24 (`models/qwen2_5_vl/modeling_qwen2_5_vl.py`), text only.
//!
//! - [`config`]: `text_encoder/config.json` (both RoPE config styles).
//! - [`model`]: embedding, decoder layers, hidden-state selection (`hidden_states[-3]`).

pub mod config;
pub mod model;

pub use config::Config;
pub use model::Qwen25VlTextModel;

use std::path::Path;

use candle_core::{DType, Device};

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

/// Loads the text model folder `dir` (`config.json` and safetensors).
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Qwen25VlTextModel, TextModelLoadError> {
    let cfg: Config = weights::load_config(dir)?;
    let path = dir.display().to_string();
    cfg.validate().map_err(|msg| TextModelLoadError::Config { path: path.clone(), msg })?;
    let vb = Checkpoint::open(dir)?.var_builder(dtype, device)?;
    Qwen25VlTextModel::new(&cfg, vb).map_err(|e| TextModelLoadError::Mismatch { path, msg: e.to_string() })
}
