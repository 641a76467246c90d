//! Input images for image-to-video, preprocessed as diffusers' `VaeImageProcessor.preprocess`:
//! resized to exactly (W, H) (Lanczos, aspect ratio not kept), then `2·(v/255) − 1` in f32.
//!
//! The resize uses the `image` crate's Lanczos3, which is not bit-identical to PIL's; images already
//! at the target size (the usual case for scripted runs and the golden tests) are not resampled.

use std::path::Path;

use candle_core::{Device, Tensor};

/// `(1, 3, height, width)` in [-1, 1].
pub fn load_image(path: &Path, height: usize, width: usize, device: &Device) -> Result<Tensor, String> {
    let img = image::open(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))?.to_rgb8();
    let img = if (img.width() as usize, img.height() as usize) == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width as u32, height as u32, image::imageops::FilterType::Lanczos3)
    };
    let data: Vec<f32> = img.into_raw().into_iter().map(|v| 2.0 * (v as f32 / 255.0) - 1.0).collect();
    Tensor::from_vec(data, (height, width, 3), device)
        .and_then(|t| t.permute((2, 0, 1))?.unsqueeze(0)?.contiguous())
        .map_err(|e| e.to_string())
}
