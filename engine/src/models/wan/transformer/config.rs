//! `WanTransformer3DModel` configuration: the checkpoint's `config.json` (serde, diffusers'
//! defaults), the named presets of the real checkpoints, and the diffusers-format writer used by
//! `make-model`.
//!
//! Defaults follow `WanTransformer3DModel.__init__` (diffusers@58eb52c0 `transformer_wan.py`
//! 571-590); preset values equal the configs in `tests/fixtures/golden/manifests/*transformer.json`
//! and `scripts/convert_wan_to_diffusers.py` 328-600.

use candle_core::Result;
use serde::{Deserialize, Serialize};

/// The `_class_name` diffusers writes for this model.
pub const CLASS_NAME: &str = "WanTransformer3DModel";
/// The diffusers version stamped into written configs (the one that produced the golden cases).
const DIFFUSERS_VERSION: &str = "0.42.1";
/// Archs `transformer_config_for_arch` knows, for error messages.
pub const ARCHS: [&str; 5] =
    ["wan2.2-ti2v-5b", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"];

/// `config.json` of a diffusers `WanTransformer3DModel`. Unknown keys (`_class_name`,
/// `_use_default_values`, …) are ignored; missing keys take diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// (t, h, w) patch; the patch embedding is a Conv3d with kernel = stride = patch.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// `null` means "same as in_channels" (diffusers: `out_channels or in_channels`).
    pub out_channels: Option<usize>,
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// Affine LayerNorm before cross-attention (`norm2`); identity when false.
    pub cross_attn_norm: bool,
    /// Diffusers accepts the key but always builds RMSNorm across heads; kept for round-tripping.
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Wan2.1 I2V: CLIP image-feature width (1280); enables `condition_embedder.image_embedder`.
    pub image_dim: Option<usize>,
    /// Wan2.1 I2V: input width of `attn2.add_k_proj/add_v_proj`; must equal the inner dim.
    pub added_kv_proj_dim: Option<usize>,
    /// RoPE table length per axis (max latent frames / rows / columns after patching).
    pub rope_max_seq_len: usize,
    /// FLF2V only: learned position embedding over the doubled image tokens.
    pub pos_embed_seq_len: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".to_string()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

impl Config {
    /// Wan2.2-TI2V-5B (`Wan-AI/Wan2.2-TI2V-5B-Diffusers/transformer`).
    pub fn ti2v_5b() -> Self {
        Self {
            num_attention_heads: 24,
            in_channels: 48,
            out_channels: Some(48),
            ffn_dim: 14336,
            num_layers: 30,
            ..Self::default()
        }
    }

    /// One expert of Wan2.2-T2V-A14B (`transformer/` and `transformer_2/` share this config).
    pub fn t2v_a14b() -> Self {
        Self::default()
    }

    /// One expert of Wan2.2-I2V-A14B: 36 input channels (latents 16 + mask 4 + condition 16), no
    /// CLIP branch.
    pub fn i2v_a14b() -> Self {
        Self { in_channels: 36, ..Self::default() }
    }

    /// Wan2.1-T2V-1.3B.
    pub fn wan21_1_3b() -> Self {
        Self { num_attention_heads: 12, ffn_dim: 8960, num_layers: 30, ..Self::default() }
    }

    /// Wan2.1-T2V-14B.
    pub fn wan21_14b() -> Self {
        Self::default()
    }

    /// Wan2.1-I2V-14B: the CLIP image branch (`image_dim` 1280, `added_kv_proj_dim` = D).
    pub fn wan21_i2v_14b() -> Self {
        Self { in_channels: 36, image_dim: Some(1280), added_kv_proj_dim: Some(5120), ..Self::default() }
    }

    /// Inner width D = heads × head_dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels after diffusers' `out_channels or in_channels`.
    pub fn out_channels(&self) -> usize {
        match self.out_channels {
            Some(c) if c > 0 => c,
            _ => self.in_channels,
        }
    }

    /// Checks what diffusers would only discover mid-forward (or never): sizes that cannot run and
    /// an image branch that is half configured.
    pub fn validate(&self) -> Result<()> {
        let d = self.inner_dim();
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 || self.num_layers == 0 {
            candle_core::bail!(
                "transformer config: num_attention_heads ({}), attention_head_dim ({}) and num_layers ({}) must be > 0",
                self.num_attention_heads,
                self.attention_head_dim,
                self.num_layers
            );
        }
        if !self.attention_head_dim.is_multiple_of(2) {
            candle_core::bail!(
                "transformer config: attention_head_dim {} must be even (RoPE rotates pairs)",
                self.attention_head_dim
            );
        }
        if self.patch_size.contains(&0) || self.in_channels == 0 || self.freq_dim == 0 || self.text_dim == 0 {
            candle_core::bail!(
                "transformer config: patch_size {:?}, in_channels {}, freq_dim {} and text_dim {} must be > 0",
                self.patch_size,
                self.in_channels,
                self.freq_dim,
                self.text_dim
            );
        }
        match (self.image_dim, self.added_kv_proj_dim) {
            (None, None) => {}
            (Some(img), Some(kv)) if kv == d => {
                if img == 0 {
                    candle_core::bail!("transformer config: image_dim must be > 0 (or null)");
                }
            }
            (Some(img), Some(kv)) => candle_core::bail!(
                "transformer config: added_kv_proj_dim {kv} must equal the inner dim {d} (= {} heads × {}): the \
                 image embedder maps image_dim {img} to {d} before add_k_proj. Checkpoints without an image branch \
                 (all Wan2.2 models) must have `\"image_dim\": null, \"added_kv_proj_dim\": null` in config.json",
                self.num_attention_heads,
                self.attention_head_dim
            ),
            (img, kv) => candle_core::bail!(
                "transformer config: image_dim ({img:?}) and added_kv_proj_dim ({kv:?}) must both be set (Wan2.1 I2V \
                 with CLIP features) or both be null (every other model)"
            ),
        }
        if self.pos_embed_seq_len.is_some() && self.image_dim.is_none() {
            candle_core::bail!("transformer config: pos_embed_seq_len is set but image_dim is null");
        }
        if let Some(q) = self.qk_norm.as_deref() {
            if q != "rms_norm_across_heads" {
                // diffusers ignores the value and always normalises across heads; so do we.
                tracing::warn!(
                    "transformer config: qk_norm {q:?} treated as \"rms_norm_across_heads\" as diffusers does"
                );
            }
        }
        Ok(())
    }

    /// The config as diffusers' `save_pretrained` writes it, `_class_name` included.
    pub fn to_diffusers_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = value.as_object_mut() {
            obj.insert("_class_name".into(), CLASS_NAME.into());
            obj.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
        }
        value
    }
}

/// The real transformer config of a `make-model --arch` name, optionally cut to `layers` blocks
/// (tiny random checkpoints with the real widths).
pub fn transformer_config_for_arch(arch: &str, layers: Option<usize>) -> Result<Config> {
    let mut cfg = match arch {
        "wan2.2-ti2v-5b" => Config::ti2v_5b(),
        "wan2.2-t2v-a14b" => Config::t2v_a14b(),
        "wan2.2-i2v-a14b" => Config::i2v_a14b(),
        "wan2.1-t2v-1.3b" => Config::wan21_1_3b(),
        "wan2.1-t2v-14b" => Config::wan21_14b(),
        other => candle_core::bail!("unknown transformer arch {other:?}: expected one of {}", ARCHS.join(", ")),
    };
    if let Some(n) = layers {
        if n == 0 {
            candle_core::bail!("--layers must be at least 1 (got 0)");
        }
        cfg.num_layers = n;
    }
    Ok(cfg)
}
