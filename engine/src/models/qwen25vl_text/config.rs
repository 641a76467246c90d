//! `Qwen2_5_VLTextConfig` (`text_encoder/config.json` of a HunyuanVideo 1.5 folder): the fields the
//! text model reads. The RoPE base sits in `rope_parameters` (transformers 5) or at the top level
//! with `rope_scaling` (older configs); both are read.

use serde::Deserialize;

fn d_eps() -> f64 {
    1e-6
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else the top-level `rope_theta`, else 1e6 (Qwen2.5-VL).
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .or(self.rope_scaling.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(1e6)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        // Text-only mRoPE: all three position rows are equal, so any section split is plain RoPE;
        // the sections must still cover the rotated half of a head.
        let mrope = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.mrope_section.clone())
            .or(self.rope_scaling.as_ref().and_then(|r| r.mrope_section.clone()));
        if let Some(s) = mrope {
            if s.iter().sum::<usize>() != self.head_dim() / 2 {
                return Err(format!("mrope_section {s:?} does not sum to head_dim/2 = {}", self.head_dim() / 2));
            }
        }
        Ok(())
    }
}
