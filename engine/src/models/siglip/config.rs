//! `image_encoder/config.json` of a SigLIP vision tower (transformers `SiglipVisionConfig`; a full
//! `SiglipConfig` is read through its `vision_config`).

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_image")]
    pub image_size: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_hidden() -> usize {
    768
}
fn default_intermediate() -> usize {
    3072
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_channels() -> usize {
    3
}
fn default_image() -> usize {
    224
}
fn default_patch() -> usize {
    16
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_eps() -> f64 {
    1e-6
}

impl Config {
    /// `google/siglip-so400m-patch14-384`'s vision tower, HunyuanVideo 1.5 I2V's image encoder
    /// (27 layers of width 1152, 729 tokens of 14-pixel patches of a 384×384 image).
    pub fn so400m_patch14_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
        }
    }

    /// `config.json` as transformers 5 saves a `SiglipVisionModel` (the golden tower's keys; the
    /// pooling head is kept, as the published checkpoint has it); `dtype` is the stored dtype's
    /// torch name.
    pub fn to_transformers_json(&self, dtype: &str) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["SiglipVisionModel"],
            "attention_dropout": 0.0,
            "dtype": dtype,
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "image_size": self.image_size,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
            "model_type": "siglip_vision_model",
            "num_attention_heads": self.num_attention_heads,
            "num_channels": self.num_channels,
            "num_hidden_layers": self.num_hidden_layers,
            "patch_size": self.patch_size,
            "transformers_version": "5.24.0",
            "vision_use_head": true
        })
    }

    /// Parses `config.json` text: a vision config, or a `SiglipConfig` holding one.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let v = v.get("vision_config").cloned().unwrap_or(v);
        let cfg: Self = serde_json::from_value(v).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} does not split into {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(format!("image_size {} is smaller than patch_size {}", self.image_size, self.patch_size));
        }
        if !matches!(self.hidden_act.as_str(), "gelu_pytorch_tanh" | "gelu_new" | "gelu") {
            return Err(format!("hidden_act {:?} is not a GELU", self.hidden_act));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches per side: the conv is `valid` with stride = patch, so a remainder is dropped
    /// (384 / 14 → 27).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Output tokens `(image_size / patch_size)²` (729 for SigLIP so400m-patch14-384).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }
}
