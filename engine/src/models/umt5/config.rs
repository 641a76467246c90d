//! `config.json` of a UMT5 or T5 encoder, keys and defaults as transformers' `UMT5Config` /
//! `T5Config` (`model_type` tells them apart: the only difference the encoder sees is where the
//! relative-position bias lives).

use serde::Deserialize;

/// UMT5 / T5 hyper-parameters. Decoder-only keys (`num_decoder_layers`, …) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// `"umt5"` (every layer has its own relative-position bias) or `"t5"` (only layer 0 has one,
    /// shared by all layers: T5 v1.0/v1.1, ByT5). Missing means UMT5, the Wan encoder.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `"gated-gelu"` (UMT5), `"relu"`, `"gated-silu"`, …: `[gated-]ACT`.
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_model_type() -> String {
    "umt5".into()
}
fn default_vocab_size() -> usize {
    250112
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    1024
}
fn default_num_layers() -> usize {
    8
}
fn default_num_heads() -> usize {
    6
}
fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff_proj() -> String {
    "gated-gelu".into()
}
fn default_eos() -> u32 {
    1
}

/// The feed-forward activation, decoded from `feed_forward_proj` as transformers does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`: the tanh approximation (what `"gated-gelu"` maps to).
    GeluTanh,
    /// `gelu`: the exact erf form.
    Gelu,
    Relu,
    Silu,
}

impl Config {
    /// `(gated, activation)` from `feed_forward_proj`: `"gated-gelu"` means `gelu_new`
    /// (UMT5Config special-cases it), otherwise the part after the last `-` names the activation.
    pub fn feed_forward(&self) -> candle_core::Result<(bool, Activation)> {
        let proj = self.feed_forward_proj.as_str();
        let parts: Vec<&str> = proj.split('-').collect();
        let gated = parts.len() == 2 && parts[0] == "gated";
        if parts.len() > 2 || (parts.len() == 2 && !gated) {
            candle_core::bail!("feed_forward_proj {proj:?} is not `gated-ACT` or `ACT`")
        }
        let act = match (proj, parts[parts.len() - 1]) {
            ("gated-gelu", _) | (_, "gelu_new") => Activation::GeluTanh,
            (_, "gelu") => Activation::Gelu,
            (_, "relu") => Activation::Relu,
            (_, "silu") | (_, "swish") => Activation::Silu,
            (_, other) => candle_core::bail!("unsupported feed-forward activation {other:?} in {proj:?}"),
        };
        Ok((gated, act))
    }

    /// Whether only layer 0 holds `relative_attention_bias`, its bias then shared by every layer
    /// (`T5Attention(has_relative_attention_bias=bool(i == 0))`); UMT5 gives each layer its own.
    pub fn shares_relative_bias(&self) -> candle_core::Result<bool> {
        match self.model_type.as_str() {
            "t5" => Ok(true),
            "umt5" => Ok(false),
            other => candle_core::bail!("model_type {other:?} is not a T5 or UMT5 encoder"),
        }
    }

    /// Attention width `num_heads · d_kv` (4096 for XXL, not necessarily `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fixture_config() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/umt5/text_encoder/config.json");
        let cfg: Config = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse");
        assert_eq!((cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.num_layers, cfg.d_ff), (32, 8, 4, 2, 64));
        assert_eq!(cfg.feed_forward().expect("ff"), (true, Activation::GeluTanh));
        assert!(!cfg.shares_relative_bias().expect("umt5"));
    }

    #[test]
    fn t5_shares_the_relative_bias() {
        let cfg: Config = serde_json::from_str(r#"{"model_type": "t5"}"#).expect("t5");
        assert!(cfg.shares_relative_bias().expect("t5"));
        let cfg: Config = serde_json::from_str(r#"{"model_type": "bert"}"#).expect("parses");
        assert!(cfg.shares_relative_bias().is_err());
    }

    #[test]
    fn feed_forward_variants() {
        let mut cfg: Config = serde_json::from_str("{}").expect("defaults");
        assert_eq!(cfg.feed_forward().expect("ff"), (true, Activation::GeluTanh));
        cfg.feed_forward_proj = "relu".into();
        assert_eq!(cfg.feed_forward().expect("ff"), (false, Activation::Relu));
        cfg.feed_forward_proj = "gated-silu".into();
        assert_eq!(cfg.feed_forward().expect("ff"), (true, Activation::Silu));
        cfg.feed_forward_proj = "ungated-gelu".into();
        assert!(cfg.feed_forward().is_err());
    }
}
