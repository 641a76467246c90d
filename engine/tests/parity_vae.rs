//! Parity of the Wan VAE against diffusers' outputs on the golden tiny models
//! (`tests/fixtures/golden/vae21`, `vae22`): decode, tiled decode, encode mean/logvar, tiled encode.
//!
//! Tolerance: these are f32 CPU references; a faithful f32 port differs only by summation order
//! (our direct conv accumulates taps in a different order than oneDNN), which lands around 1e-6
//! relative. 1e-4 relative is the project's f32 budget and still catches any semantic error (a
//! wrong tap, blend weight or chunk boundary moves the result by 1e-2 or more).

mod common;

use candle_core::{DType, Device};
use common::{assert_close, golden};
use tessera_engine::models::wan::vae::{self, Tiling, VaeParts};
use tessera_engine::tensor_io;

const TOL: f64 = 1e-4;

fn tiling_of(case: &str) -> Tiling {
    let text = std::fs::read_to_string(golden_any(case).join("case.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t = &v["tiling"];
    let g = |k: &str| t[k].as_u64().unwrap() as usize;
    Tiling {
        tile_sample_min_height: g("tile_sample_min_height"),
        tile_sample_min_width: g("tile_sample_min_width"),
        tile_sample_stride_height: g("tile_sample_stride_height"),
        tile_sample_stride_width: g("tile_sample_stride_width"),
    }
}

/// `golden/<case>` or, for `seed1/<case>`, the second set with odd shapes (`golden-seed1/`).
fn golden_any(case: &str) -> std::path::PathBuf {
    match case.strip_prefix("seed1/") {
        Some(c) => golden("../golden-seed1").join(c),
        None => golden(case),
    }
}

fn run_case(case: &str) {
    let dev = Device::Cpu;
    let dir = golden_any(case);
    let model = vae::load(&dir, VaeParts::Both, DType::F32, &dev).unwrap();
    let inputs = tensor_io::read_all(&dir.join("inputs.safetensors"), &dev).unwrap();
    let outputs = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let tiling = tiling_of(case);
    let mut quiet = |_| {};

    let decoded = model.decode(&inputs["latents"], None, &mut quiet).unwrap();
    assert_close(&format!("{case} decode"), &decoded, &outputs["decoded"], TOL);
    let tiled = model.decode(&inputs["latents"], Some(&tiling), &mut quiet).unwrap();
    assert_close(&format!("{case} tiled decode"), &tiled, &outputs["decoded_tiled"], TOL);

    let moments = model.encode(&inputs["video"], None, &mut quiet).unwrap();
    assert_close(&format!("{case} encode mean"), &moments.mean, &outputs["enc_mean"], TOL);
    assert_close(&format!("{case} encode logvar"), &moments.logvar, &outputs["enc_logvar"], TOL);
    let tiled = model.encode(&inputs["video"], Some(&tiling), &mut quiet).unwrap();
    assert_close(&format!("{case} tiled encode mean"), &tiled.mean, &outputs["enc_mean_tiled"], TOL);
}

#[test]
fn wan21_vae_matches_diffusers() {
    run_case("vae21");
}

#[test]
fn wan22_vae_matches_diffusers() {
    run_case("vae22");
}

/// Odd shapes: latents and tiles that do not divide evenly (clipped edge tiles, odd latent sizes).
#[test]
fn wan21_vae_odd_shapes_match_diffusers() {
    run_case("seed1/vae21");
}

#[test]
fn wan22_vae_odd_shapes_match_diffusers() {
    run_case("seed1/vae22");
}
