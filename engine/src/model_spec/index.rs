//! `model_index.json`: the fields of a diffusers pipeline index the Wan pipelines read.

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    /// A14B: the expert switch, as a fraction of the training timesteps.
    #[serde(default)]
    pub boundary_ratio: Option<f64>,
    /// TI2V-5B: per-token timesteps (the image latent's tokens get timestep 0).
    #[serde(default)]
    pub expand_timesteps: bool,
    #[serde(default)]
    pub transformer_2: Option<serde_json::Value>,
}

impl ModelIndex {
    /// Whether the pipeline has a second (low-noise) expert, A14B. diffusers writes
    /// `"transformer_2": [null, null]` when there is none.
    pub fn has_transformer_2(&self) -> bool {
        matches!(&self.transformer_2, Some(serde_json::Value::Array(a)) if a.first().is_some_and(|v| !v.is_null()))
    }
}
