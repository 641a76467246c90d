//! `AutoencoderKLWan` configuration, deserialised from the checkpoint's `config.json` with
//! diffusers' defaults (diffusers@58eb52c0 `autoencoder_kl_wan.py`), plus the two published presets.

use serde::{Deserialize, Serialize};

fn d_base_dim() -> usize {
    96
}
fn d_z_dim() -> usize {
    16
}
fn d_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn d_num_res_blocks() -> usize {
    2
}
fn d_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn d_three() -> usize {
    3
}
fn d_four() -> usize {
    4
}
fn d_eight() -> usize {
    8
}
fn d_latents_mean() -> Vec<f64> {
    WAN21_LATENTS_MEAN.to_vec()
}
fn d_latents_std() -> Vec<f64> {
    WAN21_LATENTS_STD.to_vec()
}

const WAN21_LATENTS_MEAN: [f64; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
const WAN21_LATENTS_STD: [f64; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];
const WAN22_LATENTS_MEAN: [f64; 48] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891, 0.1570,
    -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322,
    0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520,
    0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
];
const WAN22_LATENTS_STD: [f64; 48] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165,
    0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917,
    0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600,
    0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
];

/// `AutoencoderKLWan` config (`vae/config.json`). Unknown keys (e.g. `clip_output`) are ignored,
/// as diffusers does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d_base_dim")]
    pub base_dim: usize,
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    #[serde(default = "d_z_dim")]
    pub z_dim: usize,
    #[serde(default = "d_dim_mult")]
    pub dim_mult: Vec<usize>,
    #[serde(default = "d_num_res_blocks")]
    pub num_res_blocks: usize,
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    #[serde(default = "d_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_latents_mean")]
    pub latents_mean: Vec<f64>,
    #[serde(default = "d_latents_std")]
    pub latents_std: Vec<f64>,
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default = "d_four")]
    pub scale_factor_temporal: usize,
    #[serde(default = "d_eight")]
    pub scale_factor_spatial: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::wan21()
    }
}

impl Config {
    /// The Wan2.1 VAE (also used by Wan2.2 A14B): every diffusers default.
    pub fn wan21() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: d_dim_mult(),
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: d_temperal_downsample(),
            dropout: 0.0,
            latents_mean: d_latents_mean(),
            latents_std: d_latents_std(),
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: 4,
            scale_factor_spatial: 8,
        }
    }

    /// The Wan2.2 VAE of TI2V-5B (diffusers `scripts/convert_wan_to_diffusers.py`).
    pub fn wan22() -> Self {
        Self {
            base_dim: 160,
            decoder_base_dim: Some(256),
            z_dim: 48,
            is_residual: true,
            in_channels: 12,
            out_channels: 12,
            patch_size: Some(2),
            scale_factor_spatial: 16,
            latents_mean: WAN22_LATENTS_MEAN.to_vec(),
            latents_std: WAN22_LATENTS_STD.to_vec(),
            ..Self::wan21()
        }
    }

    /// Pixel patch size folded into channels before the encoder (1 = none).
    pub fn patch(&self) -> usize {
        self.patch_size.unwrap_or(1).max(1)
    }

    /// RGB channels of the video (config channels are per patch).
    pub fn video_channels(&self) -> usize {
        self.in_channels / (self.patch() * self.patch())
    }

    /// Spatial factor of the network itself (the encoder's ×2 stages), excluding patchify.
    pub fn network_spatial_factor(&self) -> usize {
        1 << self.temperal_downsample.len()
    }

    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Rejects configurations this port cannot run, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.attn_scales.is_empty() {
            return Err(format!("attn_scales {:?} is not supported (every Wan VAE has [])", self.attn_scales));
        }
        if self.dim_mult.len() != self.temperal_downsample.len() + 1 {
            return Err(format!(
                "dim_mult has {} entries but temperal_downsample has {} (expected one fewer)",
                self.dim_mult.len(),
                self.temperal_downsample.len()
            ));
        }
        let p = self.patch();
        if !self.in_channels.is_multiple_of(p * p) || !self.out_channels.is_multiple_of(p * p) {
            return Err(format!(
                "in/out channels {}/{} do not divide by patch² = {}",
                self.in_channels,
                self.out_channels,
                p * p
            ));
        }
        if self.scale_factor_spatial != self.network_spatial_factor() * p {
            return Err(format!(
                "scale_factor_spatial {} disagrees with the architecture ({} from the stages × patch {})",
                self.scale_factor_spatial,
                self.network_spatial_factor(),
                p
            ));
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(format!(
                "latents_mean/latents_std have {}/{} values but z_dim is {}",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            ));
        }
        Ok(())
    }
}
