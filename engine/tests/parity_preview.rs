//! The live-preview projection against a Python reference (`tests/fixtures/preview/gen.py`): ComfyUI's
//! `Latent2RGBPreviewer` with its Wan21 / Wan22 `latent_rgb_factors` and bias, on the middle latent
//! frame, averaged down to ≤ 256 px (the Wan2.1 case is 260 wide, so it is averaged by 2).

use std::path::Path;

use candle_core::{DType, Device};
use tessera_engine::pipeline::preview::{LatentRgb, LatentRgbFamily, PREVIEW_MAX_SIDE};
use tessera_engine::tensor_io;

#[test]
fn projection_matches_comfyui_factors() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/preview/previews.safetensors"));
    let t = tensor_io::read_all(path, &Device::Cpu).expect("reference previews");
    for (name, family) in [("wan22", LatentRgbFamily::Wan22), ("wan21", LatentRgbFamily::Wan21)] {
        let latents = t[&format!("{name}_latents")].to_dtype(DType::F32).unwrap();
        let want = &t[&format!("{name}_rgb")];
        let (h, w, _) = want.dims3().unwrap();
        let map = LatentRgb::for_latent_channels(latents.dims()[1]);
        assert_eq!(map.family, family);
        let img = map.project(&latents, PREVIEW_MAX_SIDE).unwrap();
        assert_eq!((img.height, img.width), (h, w), "{name} preview size");
        let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let diffs: Vec<i32> = img.rgb.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let off = diffs.iter().filter(|d| **d > 0).count();
        let clamped = want.iter().filter(|v| **v == 0 || **v == 255).count();
        println!("{name}: {w}×{h}, max |Δ| {max}, {off} of {} bytes differ, {clamped} clamped", want.len());
        // Both sides truncate an f32 to u8; torch's `linear` and the per-pixel sum here add the
        // channels in different orders (and the pooling divides differently), so a value within
        // an f32 rounding of an integer may land one step apart. Anything more is a wrong factor.
        assert!(max <= 1, "{name}: max |Δ| {max}");
        assert!(off * 100 <= want.len(), "{name}: {off} bytes off by one is more than rounding");
        assert!(clamped > 0 && clamped < want.len(), "{name}: the case exercises the clamp and the range");
    }
}
