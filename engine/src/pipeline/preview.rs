//! Live denoise previews: the current x0 estimate projected to RGB by a per-VAE-family linear map
//! (one 3-vector per latent channel plus a bias), the cheap "latent2rgb" preview ComfyUI shows
//! while sampling. No VAE runs: a preview costs one small matrix product on rank 0.
//!
//! The factors are ComfyUI's (`comfy/latent_formats.py`, classes `Wan21` and `Wan22`,
//! `latent_rgb_factors` and `latent_rgb_factors_bias`, Comfy-Org/ComfyUI at commit
//! 75399d78ddcc01f46f9b94521b29f1fe8a90ed53), applied as its `Latent2RGBPreviewer` does: on the
//! normalised latents the transformer sees, `rgb = x·F + b`, then `((rgb + 1) / 2).clamp(0, 1)·255`
//! truncated to u8. Latent spaces without published factors (the tiny test VAEs) get a documented
//! stand-in, [`LatentRgb::generic`].

use candle_core::{DType, Device, Result, Tensor};

/// Longest side of a preview, in pixels (the latent grid is averaged down to it when larger).
pub const PREVIEW_MAX_SIDE: usize = 256;

/// A small RGB8 image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// Which latent→RGB map a preview uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentRgbFamily {
    /// The Wan2.1 VAE (z 16, 8× spatial): ComfyUI `Wan21`.
    Wan21,
    /// The Wan2.2 VAE (z 48, 16× spatial): ComfyUI `Wan22`.
    Wan22,
    /// Any other latent space: channel c feeds colour c mod 3 (see [`LatentRgb::generic`]).
    Generic,
}

/// A latent→RGB linear map: `factors[c]` is channel c's contribution to (R, G, B).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentRgb {
    pub family: LatentRgbFamily,
    pub factors: Vec<[f32; 3]>,
    pub bias: [f32; 3],
}

impl LatentRgb {
    /// The map for a VAE with `z_dim` latent channels: Wan2.1 (16), Wan2.2 (48), else generic.
    pub fn for_latent_channels(z_dim: usize) -> Self {
        match z_dim {
            16 => Self { family: LatentRgbFamily::Wan21, factors: WAN21_FACTORS.to_vec(), bias: WAN21_BIAS },
            48 => Self { family: LatentRgbFamily::Wan22, factors: WAN22_FACTORS.to_vec(), bias: WAN22_BIAS },
            z => Self::generic(z),
        }
    }

    /// A stand-in for latent spaces nobody fitted factors for: channel c adds to colour c mod 3,
    /// each colour the mean of its channels, no bias. It shows structure and change, not colour.
    pub fn generic(z_dim: usize) -> Self {
        let mut counts = [0usize; 3];
        (0..z_dim).for_each(|c| counts[c % 3] += 1);
        let factors = (0..z_dim)
            .map(|c| {
                let mut f = [0f32; 3];
                f[c % 3] = 1.0 / counts[c % 3] as f32;
                f
            })
            .collect();
        Self { family: LatentRgbFamily::Generic, factors, bias: [0.0; 3] }
    }

    /// The preview of `x0` `(1, z, T, h, w)`: its middle latent frame (for image-to-video the
    /// first frame is the given image; the middle one shows what the denoise is making), averaged
    /// down by a whole factor until its longest side is at most `max_side`, projected to RGB8.
    pub fn project(&self, x0: &Tensor, max_side: usize) -> Result<RgbImage> {
        let (b, z, t, h, w) = x0.dims5()?;
        if b != 1 || z != self.factors.len() {
            candle_core::bail!(
                "preview of latents {:?} with a {}-channel latent→RGB map",
                x0.dims(),
                self.factors.len()
            )
        }
        let frame = x0.get(0)?.narrow(1, t / 2, 1)?.squeeze(1)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let k = h.max(w).div_ceil(max_side.max(1)).max(1);
        let (ph, pw) = ((h / k).max(1), (w / k).max(1));
        // Averaging before the projection equals averaging the projected pixels (the map is affine).
        let frame = if k > 1 {
            frame.narrow(1, 0, ph * k)?.narrow(2, 0, pw * k)?.reshape((z, ph, k, pw, k))?.mean(4)?.mean(2)?
        } else {
            frame
        };
        let values = frame.flatten_all()?.to_vec1::<f32>()?;
        let plane = ph * pw;
        let mut rgb = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for (ch, bias) in self.bias.iter().enumerate() {
                let v = (0..z).fold(*bias, |acc, c| acc + values[c * plane + p] * self.factors[c][ch]);
                // As ComfyUI's `preview_to_image`: [-1, 1] → [0, 1], clamped, ×255, truncated.
                rgb.push((((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8);
            }
        }
        Ok(RgbImage { width: pw, height: ph, rgb })
    }
}

/// The flow-matching x0 estimate of a step: `x − σ·v`.
pub fn x0_estimate(latents: &Tensor, velocity: &Tensor, sigma: f32) -> Result<Tensor> {
    latents.to_dtype(DType::F32)? - velocity.to_dtype(DType::F32)?.affine(sigma as f64, 0.0)?
}

/// ComfyUI `Wan21.latent_rgb_factors` (16 × RGB).
const WAN21_FACTORS: [[f32; 3]; 16] = [
    [-0.1299, -0.1692, 0.2932],
    [0.0671, 0.0406, 0.0442],
    [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328],
    [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925],
    [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636],
    [0.0680, 0.3019, 0.1128],
    [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699],
    [0.0060, -0.0633, 0.0005],
    [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
];
/// ComfyUI `Wan21.latent_rgb_factors_bias`.
const WAN21_BIAS: [f32; 3] = [-0.1835, -0.0868, -0.3360];

/// ComfyUI `Wan22.latent_rgb_factors` (48 × RGB).
const WAN22_FACTORS: [[f32; 3]; 48] = [
    [0.0119, 0.0103, 0.0046],
    [-0.1062, -0.0504, 0.0165],
    [0.0140, 0.0409, 0.0491],
    [-0.0813, -0.0677, 0.0607],
    [0.0656, 0.0851, 0.0808],
    [0.0264, 0.0463, 0.0912],
    [0.0295, 0.0326, 0.0590],
    [-0.0244, -0.0270, 0.0025],
    [0.0443, -0.0102, 0.0288],
    [-0.0465, -0.0090, -0.0205],
    [0.0359, 0.0236, 0.0082],
    [-0.0776, 0.0854, 0.1048],
    [0.0564, 0.0264, 0.0561],
    [0.0006, 0.0594, 0.0418],
    [-0.0319, -0.0542, -0.0637],
    [-0.0268, 0.0024, 0.0260],
    [0.0539, 0.0265, 0.0358],
    [-0.0359, -0.0312, -0.0287],
    [-0.0285, -0.1032, -0.1237],
    [0.1041, 0.0537, 0.0622],
    [-0.0086, -0.0374, -0.0051],
    [0.0390, 0.0670, 0.2863],
    [0.0069, 0.0144, 0.0082],
    [0.0006, -0.0167, 0.0079],
    [0.0313, -0.0574, -0.0232],
    [-0.1454, -0.0902, -0.0481],
    [0.0714, 0.0827, 0.0447],
    [-0.0304, -0.0574, -0.0196],
    [0.0401, 0.0384, 0.0204],
    [-0.0758, -0.0297, -0.0014],
    [0.0568, 0.1307, 0.1372],
    [-0.0055, -0.0310, -0.0380],
    [0.0239, -0.0305, 0.0325],
    [-0.0663, -0.0673, -0.0140],
    [-0.0416, -0.0047, -0.0023],
    [0.0166, 0.0112, -0.0093],
    [-0.0211, 0.0011, 0.0331],
    [0.1833, 0.1466, 0.2250],
    [-0.0368, 0.0370, 0.0295],
    [-0.3441, -0.3543, -0.2008],
    [-0.0479, -0.0489, -0.0420],
    [-0.0660, -0.0153, 0.0800],
    [-0.0101, 0.0068, 0.0156],
    [-0.0690, -0.0452, -0.0927],
    [-0.0145, 0.0041, 0.0015],
    [0.0421, 0.0451, 0.0373],
    [0.0504, -0.0483, -0.0356],
    [-0.0837, 0.0168, 0.0055],
];
/// ComfyUI `Wan22.latent_rgb_factors_bias`.
const WAN22_BIAS: [f32; 3] = [0.0317, -0.0878, -0.1388];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_latent_channels() {
        assert_eq!(LatentRgb::for_latent_channels(16).family, LatentRgbFamily::Wan21);
        assert_eq!(LatentRgb::for_latent_channels(48).family, LatentRgbFamily::Wan22);
        let g = LatentRgb::for_latent_channels(8);
        assert_eq!(g.family, LatentRgbFamily::Generic);
        // Channels 0, 3, 6 → R with 1/3 each; 2, 5 → B with 1/2 each.
        assert_eq!((g.factors[3][0], g.factors[5][2], g.factors[5][0]), (1.0 / 3.0, 0.5, 0.0));
    }

    #[test]
    fn large_grids_are_averaged_below_the_limit() {
        let x = Tensor::zeros((1, 16, 3, 90, 600), DType::F32, &Device::Cpu).unwrap();
        let img = LatentRgb::for_latent_channels(16).project(&x, 256).unwrap();
        // k = ceil(600 / 256) = 3: 30 × 200.
        assert_eq!((img.width, img.height, img.rgb.len()), (200, 30, 200 * 30 * 3));
        // Zero latents show the bias: R = (−0.1835 + 1) / 2 · 255 = 104.1 → 104.
        assert_eq!(&img.rgb[..3], &[104, 116, 84]);
    }
}
