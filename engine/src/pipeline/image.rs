//! Input images for image-to-video, preprocessed as diffusers' `VaeImageProcessor.preprocess`:
//! resized to exactly (W, H) (Lanczos, aspect ratio not kept), then `2·(v/255) − 1` in f32.
//!
//! The resize uses the `image` crate's Lanczos3, which is not bit-identical to PIL's; images already
//! at the target size (the usual case for scripted runs and the golden tests) are not resampled.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

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

/// A `video` tensor `[B, 3, F, H, W]` from safetensors, or an image file as `[1, 3, 1, H, W]` in
/// [-1, 1] at its own size (`tessera vae encode`'s input).
pub fn read_video_or_image(path: &Path) -> Result<Tensor, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
        let img = image::open(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))?.to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let data: Vec<f32> = img.into_raw().into_iter().map(|v| v as f32 / 127.5 - 1.0).collect();
        // (h, w, 3) -> (1, 3, 1, h, w)
        return Tensor::from_vec(data, (h, w, 3), &Device::Cpu)
            .and_then(|t| t.permute((2, 0, 1))?.reshape((1, 3, 1, h, w)))
            .map_err(|e| e.to_string());
    }
    crate::tensor_io::read_tensor(path, "video", DType::F32, &Device::Cpu).map_err(|e| e.to_string())
}
