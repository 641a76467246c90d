//! `HunyuanVideo15Transformer3DModel` configuration (`transformer/config.json`) with diffusers'
//! defaults (= the released 8.3B models).

use serde::{Deserialize, Serialize};

fn d_in() -> usize {
    65
}
fn d_out() -> usize {
    32
}
fn d_heads() -> usize {
    16
}
fn d_head_dim() -> usize {
    128
}
fn d_layers() -> usize {
    54
}
fn d_refiner() -> usize {
    2
}
fn d_mlp() -> f64 {
    4.0
}
fn d_one() -> usize {
    1
}
fn d_qk_norm() -> String {
    "rms_norm".into()
}
fn d_text() -> usize {
    3584
}
fn d_text2() -> usize {
    1472
}
fn d_image() -> usize {
    1152
}
fn d_theta() -> f64 {
    256.0
}
fn d_rope() -> Vec<usize> {
    vec![16, 56, 56]
}
fn d_glyph_hidden() -> usize {
    2048
}
fn d_target_size() -> usize {
    640
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_out")]
    pub out_channels: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_refiner")]
    pub num_refiner_layers: usize,
    #[serde(default = "d_mlp")]
    pub mlp_ratio: f64,
    #[serde(default = "d_one")]
    pub patch_size: usize,
    #[serde(default = "d_one")]
    pub patch_size_t: usize,
    #[serde(default = "d_qk_norm")]
    pub qk_norm: String,
    #[serde(default = "d_text")]
    pub text_embed_dim: usize,
    #[serde(default = "d_text2")]
    pub text_embed_2_dim: usize,
    #[serde(default = "d_image")]
    pub image_embed_dim: usize,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_rope")]
    pub rope_axes_dim: Vec<usize>,
    #[serde(default)]
    pub use_meanflow: bool,
    /// Pixel side of the resolution the model was trained at (480p: 640, 720p: 960): the I2V
    /// pipeline picks its size bucket from it and the image's aspect.
    #[serde(default = "d_target_size")]
    pub target_size: usize,
    /// Hidden width of the ByT5 glyph projection. diffusers hard-codes 2048
    /// (`HunyuanVideo15ByT5TextProjection(text_embed_2_dim, 2048, inner_dim)`), so no released
    /// config has this key; Tessera's reduced-size test fixtures set it (their generator builds the
    /// projection at that width) to keep a 16 MB matrix out of the repository.
    #[serde(default = "d_glyph_hidden")]
    pub glyph_hidden_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }
}

impl Config {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn ff_dim(&self) -> usize {
        (self.inner_dim() as f64 * self.mlp_ratio) as usize
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.patch_size != 1 || self.patch_size_t != 1 {
            return Err(format!(
                "patch_size {} / patch_size_t {}: only patch 1 (every released HunyuanVideo 1.5 model) is supported",
                self.patch_size, self.patch_size_t
            ));
        }
        if self.qk_norm != "rms_norm" {
            return Err(format!("qk_norm `{}`: only rms_norm is supported", self.qk_norm));
        }
        if self.rope_axes_dim.len() != 3
            || self.rope_axes_dim.iter().sum::<usize>() != self.attention_head_dim
            || self.rope_axes_dim.iter().any(|d| d % 2 != 0)
        {
            return Err(format!(
                "rope_axes_dim {:?} must be three even widths summing to attention_head_dim {}",
                self.rope_axes_dim, self.attention_head_dim
            ));
        }
        if self.num_attention_heads == 0 || self.num_layers == 0 {
            return Err("num_attention_heads and num_layers must be positive".into());
        }
        Ok(())
    }
}
