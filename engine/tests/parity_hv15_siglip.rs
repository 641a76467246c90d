//! HunyuanVideo 1.5's SigLIP image encoder against transformers 5.24 (`tests/fixtures/hv15/siglip`,
//! the shared golden case as written, copied by `scripts/copy_hv15_small_cases.py`): the vision tower
//! on stored `pixel_values` (`last_hidden_state`: 2 layers, 44 px, patch 14 → 3×3 tokens with the
//! remainder dropped, checkpoint without the `vision_model.` prefix and with the unused `head.*`),
//! the feature extractor on `image.png` (Pillow's bicubic resize 96×128 → 44×44, rescale, normalise),
//! and `_get_image_embeds(image.png)` end to end.
//!
//! Tolerances: 1e-4 relative for the tower (f32 on both sides, summation order only). The pixel
//! values come from a port of Pillow's fixed-point resampler (integer arithmetic end to end), so
//! they must be equal: measured max-abs 0 (another bicubic differs by ~1e-2).

mod common;

use std::path::PathBuf;

use candle_core::Device;
use common::{assert_close, errors};
use tessera_engine::models::siglip::{self, ImageEncoder};
use tessera_engine::tensor_io;

fn case() -> PathBuf {
    match std::env::var_os("HV15_SIGLIP_CASE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/siglip"),
    }
}

#[test]
fn siglip_tower_matches_transformers() {
    let dev = Device::Cpu;
    let dir = case();
    let model = siglip::load(&dir.join("image_encoder"), candle_core::DType::F32, &dev).unwrap();
    assert_eq!(model.config().num_patches(), 9, "44 px / patch 14 → 3×3 tokens");
    let i = tensor_io::read_all(&dir.join("inputs.safetensors"), &dev).unwrap();
    let o = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let got = model.forward(&i["pixel_values"]).unwrap();
    assert_close("SigLIP last_hidden_state (stored pixel values)", &got, &o["last_hidden_state"], 1e-4);
}

#[test]
fn siglip_feature_extractor_and_image_embeds_match_transformers() {
    let dev = Device::Cpu;
    let dir = case();
    let enc = ImageEncoder::load(&dir, &dev).unwrap();
    let img = image::open(dir.join("image.png")).unwrap().to_rgb8();
    let hw = (img.height() as usize, img.width() as usize);
    assert_eq!(hw, (96, 128));
    let rgb = img.into_raw();
    let o = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let px = enc.pixel_values(&rgb, hw).unwrap();
    let (max, rel) = errors(&px, &o["fe_pixel_values"]);
    println!("feature extractor pixel values (Pillow bicubic port): max_abs {max:.3e}  rel {rel:.3e}");
    assert!(max == 0.0, "pixel values differ from Pillow's: max-abs {max:.3e} (rel {rel:.3e})");
    let embeds = enc.embeds(&rgb, hw).unwrap();
    assert_close("image_embeds = _get_image_embeds(image.png)", &embeds, &o["image_embeds"], 1e-4);
    // And from the stored pixels: the tower alone.
    let from_stored = enc.model.forward(&o["fe_pixel_values"]).unwrap();
    assert_close("image_embeds from the stored fe_pixel_values", &from_stored, &o["image_embeds"], 1e-4);
}
