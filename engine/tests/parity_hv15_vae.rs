//! Parity of the HunyuanVideo 1.5 VAE against diffusers' outputs on the tiny golden model
//! (`tests/fixtures/hv15/vae`, written by `scripts/gen_hv15_vae.py`: bf16-stored weights, f32
//! references computed from those values): decode, tiled decode, encode mean/logvar (video and a
//! single I2V frame), tiled encode, the mid-block intermediates, and streaming = whole clip.
//!
//! `HV15_VAE_CASE=<dir>` runs the same checks on another case folder of the same layout (e.g. the
//! shared golden `hv15/vae`, a larger 9-frame case); the default is the tracked fixture.
//!
//! Tolerance: f32 CPU references; the port differs only in summation order (direct conv taps,
//! blocked attention, fused residual adds) → around 1e-6 relative. 1e-4 is the project's f32
//! budget and still catches any semantic error (a wrong tap, rearrange or mask moves it by 1e-2+).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use tessera_engine::models::hv15::vae::layers::{Caches, Rows};
use tessera_engine::models::hv15::vae::{self, Chunking};
use tessera_engine::models::wan::vae::{Tiling, VaeParts};
use tessera_engine::tensor_io;

const TOL: f64 = 1e-4;

fn case_dir() -> PathBuf {
    match std::env::var_os("HV15_VAE_CASE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/vae"),
    }
}

/// `enable_tiling(64, 64, 4, 4, 0.25)`: 64-px tiles every 64 − int(64·0.25) = 48 px.
fn tiling() -> Tiling {
    Tiling::parse("64,64,48,48").unwrap()
}

/// `[1, C, T, H, W]` → `[T, C, H, W]`.
fn frames(x: &Tensor) -> Tensor {
    x.get(0).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
}

#[test]
fn hv15_vae_matches_diffusers() {
    let dev = Device::Cpu;
    let dir = case_dir();
    println!("case {}", dir.display());
    let model = vae::load(&dir, VaeParts::Both, DType::F32, &dev).unwrap();
    let inputs = tensor_io::read_all(&dir.join("inputs.safetensors"), &dev).unwrap();
    let outputs = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let (z, video, image) = (f32(&inputs["latents"]), f32(&inputs["video"]), f32(&inputs["image"]));
    let mut quiet = |_| {};

    // Intermediates first: they localise an error to a stage.
    let dec = model.decoder().unwrap();
    let mut caches = Caches::new();
    caches.begin_chunk();
    let mid = dec.forward_mid(&frames(&z), &mut caches, Rows::Whole).unwrap();
    assert_close("decoder mid block", &mid, &frames(&outputs["dbg_dec_mid"]), TOL);
    let up0 = dec.forward_up(0, &mid, &mut caches, Rows::Whole).unwrap();
    assert_close("decoder up block 0", &up0, &frames(&outputs["dbg_dec_up0"]), TOL);
    let mut caches = Caches::new();
    caches.begin_chunk();
    let enc_mid = model.encoder().unwrap().forward_mid(&frames(&video), &mut caches, Rows::Whole).unwrap();
    assert_close("encoder mid block", &enc_mid, &frames(&outputs["dbg_enc_mid"]), TOL);

    let whole = model.decode_with(&z, None, Chunking::Whole, &mut quiet).unwrap();
    assert_close("decode (whole clip)", &whole, &outputs["decoded"], TOL);
    let streamed = model.decode(&z, None, &mut quiet).unwrap();
    assert_close("decode (streamed)", &streamed, &outputs["decoded"], TOL);
    assert_close("streamed decode vs whole clip", &streamed, &whole, 1e-6);
    let tiled = model.decode(&z, Some(&tiling()), &mut quiet).unwrap();
    assert_close("tiled decode", &tiled, &outputs["decoded_tiled"], TOL);

    let m = model.encode_with(&video, None, Chunking::Whole, &mut quiet).unwrap();
    assert_close("encode mean (whole clip)", &m.mean, &outputs["enc_mean"], TOL);
    assert_close("encode logvar (whole clip)", &m.logvar, &outputs["enc_logvar"], TOL);
    let s = model.encode(&video, None, &mut quiet).unwrap();
    assert_close("encode mean (streamed)", &s.mean, &outputs["enc_mean"], TOL);
    assert_close("streamed encode vs whole clip", &s.mean, &m.mean, 1e-6);
    let t = model.encode(&video, Some(&tiling()), &mut quiet).unwrap();
    assert_close("tiled encode mean", &t.mean, &outputs["enc_mean_tiled"], TOL);
    assert_close("tiled encode logvar", &t.logvar, &outputs["enc_logvar_tiled"], TOL);
    let i = model.encode(&image, None, &mut quiet).unwrap();
    assert_close("image encode mean", &i.mean, &outputs["enc_image_mean"], TOL);
    let it = model.encode(&image, Some(&tiling()), &mut quiet).unwrap();
    assert_close("tiled image encode mean", &it.mean, &outputs["enc_image_mean_tiled"], TOL);
}
