//! `AutoencoderKLHunyuanVideo15` configuration (`vae/config.json`) with diffusers' defaults
//! (`autoencoder_kl_hunyuanvideo15.py`), and the module structure it implies.

use serde::{Deserialize, Serialize};

fn d_three() -> usize {
    3
}
fn d_latent() -> usize {
    32
}
fn d_blocks() -> Vec<usize> {
    vec![128, 256, 512, 1024, 1024]
}
fn d_layers() -> usize {
    2
}
fn d_spatial() -> usize {
    16
}
fn d_temporal() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_scaling() -> f64 {
    1.03682
}

/// `AutoencoderKLHunyuanVideo15` config. Unknown keys are ignored, as diffusers does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_blocks")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d_spatial")]
    pub spatial_compression_ratio: usize,
    #[serde(default = "d_temporal")]
    pub temporal_compression_ratio: usize,
    #[serde(default = "d_true")]
    pub downsample_match_channel: bool,
    #[serde(default = "d_true")]
    pub upsample_match_channel: bool,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
}

impl Default for Config {
    /// The released checkpoint's config (= diffusers' defaults).
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }
}

/// One encoder down block: `layers_per_block` resnets `in_c → out_c`, then an optional downsampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownSpec {
    pub in_c: usize,
    pub out_c: usize,
    /// `(out channels, temporal)` of the `HunyuanVideo15Downsample`, if any.
    pub down: Option<(usize, bool)>,
}

/// One decoder up block: `layers_per_block + 1` resnets `in_c → out_c`, then an optional upsampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpSpec {
    pub in_c: usize,
    pub out_c: usize,
    /// `(out channels, temporal)` of the `HunyuanVideo15Upsample`, if any.
    pub up: Option<(usize, bool)>,
}

/// `i < log2(n)` as diffusers writes it (`i < np.log2(n)`), exact for powers of two.
fn below_log2(i: usize, n: usize) -> bool {
    (1usize << i) < n
}

impl Config {
    /// Checks what the module tree and the rearranges rely on; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.block_out_channels;
        if b.is_empty() || b.contains(&0) {
            return Err(format!("block_out_channels {b:?} must be non-empty and positive"));
        }
        for (name, v) in [
            ("spatial_compression_ratio", self.spatial_compression_ratio),
            ("temporal_compression_ratio", self.temporal_compression_ratio),
        ] {
            if !v.is_power_of_two() {
                return Err(format!("{name} {v} must be a power of two"));
            }
        }
        if self.temporal_compression_ratio > self.spatial_compression_ratio {
            return Err("temporal_compression_ratio may not exceed spatial_compression_ratio".into());
        }
        let stages = self.spatial_compression_ratio.trailing_zeros() as usize;
        if stages >= b.len() {
            return Err(format!(
                "spatial_compression_ratio {} needs {} down/up stages, block_out_channels has {} blocks",
                self.spatial_compression_ratio,
                stages,
                b.len()
            ));
        }
        if self.latent_channels == 0 || self.layers_per_block == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err("latent_channels, layers_per_block, in_channels and out_channels must be positive".into());
        }
        let last = b[b.len() - 1];
        if !last.is_multiple_of(2 * self.latent_channels) {
            return Err(format!(
                "block_out_channels[-1] {last} must be a multiple of 2·latent_channels {}",
                2 * self.latent_channels
            ));
        }
        for d in self.down_blocks() {
            if let Some((out, temporal)) = d.down {
                let f = if temporal { 8 } else { 4 };
                if !out.is_multiple_of(f)
                    || !(f * d.out_c).is_multiple_of(out)
                    || (temporal && !(f * d.out_c / out).is_multiple_of(2))
                {
                    return Err(format!("down block {} → {out} channels does not split into whole groups", d.out_c));
                }
            }
        }
        for u in self.up_blocks() {
            if let Some((out, temporal)) = u.up {
                let f = if temporal { 8 } else { 4 };
                let whole = (f * out).is_multiple_of(u.out_c);
                if !whole || (temporal && (!u.out_c.is_multiple_of(8) || !(f * out / u.out_c).is_multiple_of(2))) {
                    return Err(format!("up block {} → {out} channels does not repeat into whole groups", u.out_c));
                }
            }
        }
        Ok(())
    }

    /// The encoder's down blocks, as `HunyuanVideo15Encoder3D.__init__` builds them.
    pub fn down_blocks(&self) -> Vec<DownSpec> {
        let b = &self.block_out_channels;
        let mut input = b[0];
        let ratio = self.spatial_compression_ratio / self.temporal_compression_ratio;
        (0..b.len())
            .map(|i| {
                let out_c = b[i];
                let spec = if below_log2(i, self.spatial_compression_ratio) {
                    let temporal = !below_log2(i, ratio);
                    let down_out = if self.downsample_match_channel { b[i + 1] } else { out_c };
                    DownSpec { in_c: input, out_c, down: Some((down_out, temporal)) }
                } else {
                    DownSpec { in_c: input, out_c, down: None }
                };
                input = spec.down.map_or(out_c, |(c, _)| c);
                spec
            })
            .collect()
    }

    /// The decoder's up blocks (channels reversed), as `HunyuanVideo15Decoder3D.__init__` builds them.
    pub fn up_blocks(&self) -> Vec<UpSpec> {
        let b: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let mut input = b[0];
        (0..b.len())
            .map(|i| {
                let out_c = b[i];
                let spatial = below_log2(i, self.spatial_compression_ratio);
                let temporal = below_log2(i, self.temporal_compression_ratio);
                let spec = if spatial || temporal {
                    let up_out = if self.upsample_match_channel { b[i + 1] } else { out_c };
                    UpSpec { in_c: input, out_c, up: Some((up_out, temporal)) }
                } else {
                    UpSpec { in_c: input, out_c, up: None }
                };
                input = spec.up.map_or(out_c, |(c, _)| c);
                spec
            })
            .collect()
    }

    /// The deepest feature width (mid blocks).
    pub fn mid_channels(&self) -> usize {
        self.block_out_channels[self.block_out_channels.len() - 1]
    }

    /// Output frames of a decode of `latent_frames`: `1 + 4·(T − 1)`.
    pub fn decoded_frames(&self, latent_frames: usize) -> usize {
        1 + self.temporal_compression_ratio * latent_frames.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_config_structure() {
        let c = Config::default();
        c.validate().unwrap();
        let down = c.down_blocks();
        assert_eq!(down[0], DownSpec { in_c: 128, out_c: 128, down: Some((256, false)) });
        assert_eq!(down[2], DownSpec { in_c: 512, out_c: 512, down: Some((1024, true)) });
        assert_eq!(down[4], DownSpec { in_c: 1024, out_c: 1024, down: None });
        let up = c.up_blocks();
        assert_eq!(up[0], UpSpec { in_c: 1024, out_c: 1024, up: Some((1024, true)) });
        assert_eq!(up[1], UpSpec { in_c: 1024, out_c: 1024, up: Some((512, true)) });
        assert_eq!(up[2], UpSpec { in_c: 512, out_c: 512, up: Some((256, false)) });
        assert_eq!(up[4], UpSpec { in_c: 128, out_c: 128, up: None });
        assert_eq!(c.decoded_frames(31), 121);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let c = Config { spatial_compression_ratio: 12, ..Config::default() };
        assert!(c.validate().unwrap_err().contains("spatial_compression_ratio"));
        let c = Config { latent_channels: 48, ..Config::default() };
        assert!(c.validate().unwrap_err().contains("latent_channels"));
    }
}
