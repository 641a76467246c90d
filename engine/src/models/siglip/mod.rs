//! SigLIP, HunyuanVideo 1.5's image encoder for image-to-video: the vision tower
//! (`image_encoder/`, transformers `SiglipVisionModel`) and its preprocessing (`feature_extractor/`,
//! `SiglipImageProcessor`).
//!
//! - [`config`] — `image_encoder/config.json`.
//! - [`vision`] — embeddings, encoder layers, `post_layernorm` → `last_hidden_state`.
//! - [`processor`] — the feature extractor, with Pillow's resampling ported for exact pixel values.
//!
//! transformers 5 saves the tower without the `vision_model.` prefix (and with the unused pooling
//! `head.*`); older checkpoints have the prefix. [`load`] accepts both.

pub mod config;
pub mod processor;
pub mod vision;

pub use config::Config;
pub use processor::{pil_resize, ImageProcessorConfig, PilFilter};
pub use vision::SiglipVisionModel;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::weights::{Checkpoint, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum ImageEncoderError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("cannot read {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("image encoder weights in {path} do not match its config.json: {msg}")]
    Mismatch { path: String, msg: String },
    #[error("{0}")]
    Model(#[from] candle_core::Error),
}

fn read(path: &Path) -> Result<String, ImageEncoderError> {
    std::fs::read_to_string(path)
        .map_err(|e| ImageEncoderError::Config { path: path.display().to_string(), msg: e.to_string() })
}

/// Loads the vision tower in `dir` (`image_encoder/`: `config.json` and safetensors).
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<SiglipVisionModel, ImageEncoderError> {
    let path = dir.join("config.json");
    let cfg = Config::from_json(&read(&path)?)
        .map_err(|msg| ImageEncoderError::Config { path: path.display().to_string(), msg })?;
    let vb = Checkpoint::open(dir)?.var_builder(dtype, device)?;
    let vb =
        if vb.contains_tensor("vision_model.embeddings.patch_embedding.weight") { vb.pp("vision_model") } else { vb };
    SiglipVisionModel::new(&cfg, vb)
        .map_err(|e| ImageEncoderError::Mismatch { path: dir.display().to_string(), msg: e.to_string() })
}

/// The feature extractor and the tower of a pipeline folder: `image_embeds` as the I2V pipeline's
/// `_get_image_embeds` computes them.
#[derive(Debug)]
pub struct ImageEncoder {
    pub processor: ImageProcessorConfig,
    pub model: SiglipVisionModel,
}

impl ImageEncoder {
    /// Loads `feature_extractor/` and `image_encoder/` of the pipeline folder `root` in f32.
    pub fn load(root: &Path, device: &Device) -> Result<Self, ImageEncoderError> {
        let path = root.join("feature_extractor/preprocessor_config.json");
        let processor = ImageProcessorConfig::from_json(&read(&path)?)
            .map_err(|msg| ImageEncoderError::Config { path: path.display().to_string(), msg })?;
        let model = load(&root.join("image_encoder"), DType::F32, device)?;
        Ok(Self { processor, model })
    }

    /// `pixel_values` `(1, 3, S, S)` of an RGB image `(h, w, 3)` u8.
    pub fn pixel_values(&self, rgb: &[u8], hw: (usize, usize)) -> Result<Tensor, ImageEncoderError> {
        Ok(self.processor.preprocess(rgb, hw, self.model.device())?)
    }

    /// `image_embeds` `(1, tokens, hidden)` f32 of an RGB image `(h, w, 3)` u8.
    pub fn embeds(&self, rgb: &[u8], hw: (usize, usize)) -> Result<Tensor, ImageEncoderError> {
        Ok(self.model.forward(&self.pixel_values(rgb, hw)?)?)
    }
}
