//! `feature_extractor/preprocessor_config.json` (transformers `SiglipImageProcessor`, PIL backend):
//! RGB → resize to `size` with PIL's resampling → `x · rescale_factor` → `(x − mean) / std`.
//!
//! The resize is a port of Pillow's `ImagingResample` (`libImaging/Resample.c`) for 8-bit images:
//! separable, antialiased (the filter's support widened by the downscale factor), coefficients
//! rounded to 22-bit fixed point, a horizontal pass over the rows the vertical pass needs, each pass
//! rounded and clipped to u8. That is what `PIL.Image.resize` computes, so the pixel values equal
//! transformers' exactly; another bicubic (torchvision, `image`'s) differs by ~1e-2.

use candle_core::{Device, Result, Tensor};

/// The preprocessing the I2V pipeline's `feature_extractor` applies.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ImageProcessorConfig {
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default = "default_size")]
    pub size: Size,
    /// PIL resample filter id: 2 bilinear, 3 bicubic (SigLIP's), 1 Lanczos.
    #[serde(default = "default_resample")]
    pub resample: u32,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "default_half")]
    pub image_mean: Vec<f64>,
    #[serde(default = "default_half")]
    pub image_std: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Size {
    pub height: usize,
    pub width: usize,
}

fn yes() -> bool {
    true
}
fn default_size() -> Size {
    Size { height: 224, width: 224 }
}
fn default_resample() -> u32 {
    3
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn default_half() -> Vec<f64> {
    vec![0.5; 3]
}

/// A PIL resampling filter: support radius and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl PilFilter {
    pub fn from_pil(id: u32) -> std::result::Result<Self, String> {
        match id {
            1 => Ok(Self::Lanczos),
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            other => Err(format!("PIL resample filter {other} is not supported (1 Lanczos, 2 bilinear, 3 bicubic)")),
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => (1.0 - x).max(0.0),
            Self::Bicubic => {
                // Keys' cubic with a = −0.5, as Pillow's `bicubic_filter`.
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                let sinc =
                    |x: f64| if x == 0.0 { 1.0 } else { (x * std::f64::consts::PI).sin() / (x * std::f64::consts::PI) };
                if x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// Per output pixel: first input index, count, and fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let w: Vec<f64> = (0..n).map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|v| {
                    let v = if total != 0.0 { v / total } else { *v };
                    let f = v * (1u64 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + f) as i32
                    } else {
                        (0.5 + f) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `PIL.Image.resize((out_w, out_h), filter)` of an interleaved 8-bit image `(h, w, channels)`.
pub fn pil_resize(
    src: &[u8],
    (h, w, ch): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
    filter: PilFilter,
) -> Vec<u8> {
    assert_eq!(src.len(), h * w * ch, "image buffer does not match its shape");
    let horiz = coeffs(w, out_w, filter);
    let vert = coeffs(h, out_h, filter);
    let need_h = out_w != w;
    let need_v = out_h != h;
    // Rows the vertical pass reads (Pillow shifts the vertical bounds by the first one).
    let (y_first, y_last) =
        if need_h && need_v { (vert[0].0, vert[out_h - 1].0 + vert[out_h - 1].1.len()) } else { (0, h) };
    let round = 1i32 << (PRECISION_BITS - 1);
    let (cur, cur_w) = if need_h {
        let rows = y_last - y_first;
        let mut cur = vec![0u8; rows * out_w * ch];
        for y in 0..rows {
            let row = &src[(y + y_first) * w * ch..(y + y_first + 1) * w * ch];
            for (xx, (xmin, k)) in horiz.iter().enumerate() {
                for c in 0..ch {
                    let mut ss = round;
                    for (x, kv) in k.iter().enumerate() {
                        ss = ss.wrapping_add((row[(xmin + x) * ch + c] as i32).wrapping_mul(*kv));
                    }
                    cur[(y * out_w + xx) * ch + c] = clip8(ss);
                }
            }
        }
        (cur, out_w)
    } else {
        (src.to_vec(), w)
    };
    if !need_v {
        return cur;
    }
    {
        let shift = if need_h { y_first } else { 0 };
        let mut out = vec![0u8; out_h * cur_w * ch];
        for (yy, (ymin, k)) in vert.iter().enumerate() {
            let ymin = ymin - shift;
            for x in 0..cur_w {
                for c in 0..ch {
                    let mut ss = round;
                    for (y, kv) in k.iter().enumerate() {
                        ss = ss.wrapping_add((cur[((ymin + y) * cur_w + x) * ch + c] as i32).wrapping_mul(*kv));
                    }
                    out[(yy * cur_w + x) * ch + c] = clip8(ss);
                }
            }
        }
        out
    }
}

impl ImageProcessorConfig {
    /// Parses `preprocessor_config.json` text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        PilFilter::from_pil(cfg.resample)?;
        if cfg.image_mean.len() != 3 || cfg.image_std.len() != 3 || cfg.image_std.contains(&0.0) {
            return Err("image_mean / image_std need three entries, std non-zero".into());
        }
        Ok(cfg)
    }

    /// `pixel_values` `(1, 3, H, W)` f32 of an RGB image given as `(h, w, 3)` u8.
    pub fn preprocess(&self, rgb: &[u8], (h, w): (usize, usize), device: &Device) -> Result<Tensor> {
        let filter = PilFilter::from_pil(self.resample).map_err(candle_core::Error::msg)?;
        let (oh, ow) = if self.do_resize { (self.size.height, self.size.width) } else { (h, w) };
        let px = if (oh, ow) == (h, w) { rgb.to_vec() } else { pil_resize(rgb, (h, w, 3), (oh, ow), filter) };
        let mut data = vec![0f32; 3 * oh * ow];
        for c in 0..3 {
            let (mean, std) = (self.image_mean[c], self.image_std[c]);
            for i in 0..oh * ow {
                // transformers: `rescale` multiplies in float64 and casts to float32; `normalize`
                // works in float32.
                let mut v = px[i * 3 + c] as f32;
                if self.do_rescale {
                    v = (px[i * 3 + c] as f64 * self.rescale_factor) as f32;
                }
                if self.do_normalize {
                    v = (v - mean as f32) / std as f32;
                }
                data[c * oh * ow + i] = v;
            }
        }
        Tensor::from_vec(data, (1, 3, oh, ow), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images() {
        let img: Vec<u8> = (0..4 * 6 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(pil_resize(&img, (4, 6, 3), (4, 6), PilFilter::Bicubic), img);
        // A constant image stays constant under any normalised filter (weights sum to 1 in fixed point).
        let flat = vec![200u8; 30 * 40 * 3];
        assert!(pil_resize(&flat, (30, 40, 3), (11, 7), PilFilter::Bicubic).iter().all(|v| *v == 200));
    }

    #[test]
    fn bicubic_kernel() {
        let f = PilFilter::Bicubic;
        assert_eq!(f.weight(0.0), 1.0);
        assert_eq!(f.weight(1.0), 0.0);
        assert_eq!(f.weight(2.0), 0.0);
        assert!((f.weight(0.5) - 0.5625).abs() < 1e-12);
        assert!((f.weight(1.5) + 0.0625).abs() < 1e-12);
    }
}
