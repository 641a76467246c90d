//! What the planner knows about a model: the config files of a diffusers pipeline folder only
//! (`model_index.json`, `transformer[_2]/config.json`, `vae/config.json`,
//! `text_encoder/config.json`), read with the engine's own config structs. No weights are opened,
//! so a plan can be made for a checkpoint that is not downloaded yet.

use std::path::{Path, PathBuf};

use crate::models::umt5::config::Config as Umt5Config;
use crate::models::wan::transformer::config::Config as DitConfig;
use crate::models::wan::vae::config::Config as VaeConfig;
use crate::pipeline::wan::ModelIndex;

/// Why a model folder cannot be planned for.
#[derive(Debug, thiserror::Error)]
pub enum ModelSpecError {
    #[error("cannot read {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("invalid {component} config in {path}: {msg}")]
    Invalid { component: &'static str, path: PathBuf, msg: String },
}

/// The configs of one pipeline folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub index: ModelIndex,
    pub transformer: DitConfig,
    /// The low-noise expert of A14B.
    pub transformer_2: Option<DitConfig>,
    pub vae: VaeConfig,
    /// `None` when the folder has no `text_encoder/` (prompt embeddings come from files).
    pub text_encoder: Option<Umt5Config>,
}

impl PartialEq for ModelIndex {
    fn eq(&self, other: &Self) -> bool {
        self.class_name == other.class_name
            && self.boundary_ratio == other.boundary_ratio
            && self.expand_timesteps == other.expand_timesteps
            && self.transformer_2 == other.transformer_2
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, component: &'static str) -> Result<T, ModelSpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelSpecError::Read {
        path: path.to_path_buf(),
        msg: format!("{e}; --model must be a diffusers pipeline folder"),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelSpecError::Invalid {
        component,
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl ModelSpec {
    /// Reads the config files under `root`.
    pub fn from_dir(root: &Path) -> Result<Self, ModelSpecError> {
        let index: ModelIndex = read_json(&root.join("model_index.json"), "model_index.json")?;
        let transformer: DitConfig = read_json(&root.join("transformer/config.json"), "transformer")?;
        let has_t2 = matches!(&index.transformer_2, Some(serde_json::Value::Array(a)) if a.first().is_some_and(|v| !v.is_null()));
        let transformer_2 = if has_t2 {
            Some(read_json::<DitConfig>(&root.join("transformer_2/config.json"), "transformer_2")?)
        } else {
            None
        };
        let vae: VaeConfig = read_json(&root.join("vae/config.json"), "vae")?;
        let te = root.join("text_encoder/config.json");
        let text_encoder = if te.is_file() { Some(read_json::<Umt5Config>(&te, "text_encoder")?) } else { None };
        let spec = Self { index, transformer, transformer_2, vae, text_encoder };
        spec.validate(root)?;
        Ok(spec)
    }

    fn validate(&self, root: &Path) -> Result<(), ModelSpecError> {
        let invalid = |component, msg: String| ModelSpecError::Invalid { component, path: root.to_path_buf(), msg };
        for (name, t) in [("transformer", Some(&self.transformer)), ("transformer_2", self.transformer_2.as_ref())] {
            if let Some(t) = t {
                t.validate().map_err(|e| invalid(name, e.to_string()))?;
            }
        }
        self.vae.validate().map_err(|e| invalid("vae", e))?;
        if self.transformer.out_channels() != self.vae.z_dim {
            return Err(invalid(
                "transformer",
                format!(
                    "out_channels {} differs from the VAE's z_dim {}: transformer and vae/ are from different models",
                    self.transformer.out_channels(),
                    self.vae.z_dim
                ),
            ));
        }
        Ok(())
    }

    /// Height and width must be multiples of this (VAE spatial factor × transformer patch).
    pub fn size_multiple(&self) -> usize {
        self.vae.scale_factor_spatial * self.transformer.patch_size[1]
    }

    /// A14B / Wan2.1 I2V: the image is VAE-encoded with `frames − 1` zero frames and concatenated
    /// as channels (TI2V encodes the single image).
    pub fn channel_concat_i2v(&self) -> bool {
        self.transformer.in_channels != self.vae.z_dim
    }

    /// Latent grid `(frames, rows, cols)` of a request.
    pub fn latent_grid(&self, height: usize, width: usize, frames: usize) -> (usize, usize, usize) {
        let s = self.vae.scale_factor_spatial;
        ((frames.max(1) - 1) / self.vae.scale_factor_temporal + 1, height / s, width / s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/configs")).join(name)
    }

    #[test]
    fn real_configs_load() {
        let ti2v = ModelSpec::from_dir(&fixture("wan2.2-ti2v-5b")).unwrap();
        assert!(ti2v.index.expand_timesteps && ti2v.transformer_2.is_none() && !ti2v.channel_concat_i2v());
        assert_eq!(ti2v.size_multiple(), 32);
        assert_eq!(ti2v.latent_grid(704, 1280, 121), (31, 44, 80));
        let a14b = ModelSpec::from_dir(&fixture("wan2.2-i2v-a14b")).unwrap();
        assert!(a14b.transformer_2.is_some() && a14b.channel_concat_i2v());
        assert_eq!(a14b.text_encoder.as_ref().map(|t| t.num_layers), Some(24));
    }

    #[test]
    fn missing_folder_names_the_file() {
        let err = ModelSpec::from_dir(Path::new("/nonexistent/model")).unwrap_err().to_string();
        assert!(err.contains("model_index.json") && err.contains("diffusers pipeline folder"), "{err}");
    }
}
