//! Halo mode (row slabs with neighbour exchange at every conv) equals the untiled decode, on ranks
//! that are threads of this process (`LocalRowExchange`); the multi-process runtime runs the same
//! model code over its collectives.
//!
//! Tolerance: the slabs run the very same taps in the same order as the untiled decode; only the
//! attention's key blocks can be split differently, so the results agree to f32 rounding (1e-6).

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, golden};
use tessera_engine::models::wan::vae::split::{LocalRowExchange, RowExchange};
use tessera_engine::models::wan::vae::{self, AutoencoderKLWan, VaeParts};
use tessera_engine::tensor_io;

fn halo_decode(model: &Arc<AutoencoderKLWan>, z: &Tensor, world: usize) -> Tensor {
    let handles: Vec<_> = LocalRowExchange::world(world)
        .into_iter()
        .map(|ex| {
            let (model, z) = (model.clone(), z.clone());
            std::thread::spawn(move || {
                let ex: Arc<dyn RowExchange> = Arc::new(ex);
                model.decode_halo(&z, ex, &mut |_| {}).unwrap()
            })
        })
        .collect();
    let mut outs: Vec<Option<Tensor>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(outs[1..].iter().all(Option::is_none), "only rank 0 assembles the video");
    outs.remove(0).expect("rank 0 returns the video")
}

fn check(dir: std::path::PathBuf, name: &str, worlds: &[usize]) {
    let dev = Device::Cpu;
    let model = Arc::new(vae::load(&dir, VaeParts::Decoder, DType::F32, &dev).unwrap());
    let z = tensor_io::read_tensor(&dir.join("inputs.safetensors"), "latents", DType::F32, &dev).unwrap();
    let untiled = model.decode(&z, None, &mut |_| {}).unwrap();
    let want = tensor_io::read_tensor(&dir.join("outputs.safetensors"), "decoded", DType::F32, &dev).unwrap();
    for &world in worlds {
        let got = halo_decode(&model, &z, world);
        assert_close(&format!("{name} halo x{world} vs untiled"), &got, &untiled, 1e-6);
        assert_close(&format!("{name} halo x{world} vs diffusers"), &got, &want, 1e-4);
    }
}

#[test]
fn halo_decode_equals_untiled_wan21() {
    check(golden("vae21"), "vae21", &[2, 3]);
    check(golden("../golden-seed1/vae21"), "seed1/vae21", &[4]);
}

#[test]
fn halo_decode_equals_untiled_wan22() {
    check(golden("vae22"), "vae22", &[2, 6]);
    check(golden("../golden-seed1/vae22"), "seed1/vae22", &[3]);
}

#[test]
fn halo_needs_a_row_per_rank() {
    let dev = Device::Cpu;
    let model = Arc::new(vae::load(&golden("vae22"), VaeParts::Decoder, DType::F32, &dev).unwrap());
    let z = Tensor::zeros((1, 8, 1, 2, 3), DType::F32, &dev).unwrap();
    let ex: Arc<dyn RowExchange> = Arc::new(LocalRowExchange::world(3).remove(0));
    let err = model.decode_halo(&z, ex, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("use at most 2 ranks"), "{err}");
}

fn halo_encode(model: &Arc<AutoencoderKLWan>, video: &Tensor, world: usize) -> Vec<Tensor> {
    let handles: Vec<_> = LocalRowExchange::world(world)
        .into_iter()
        .map(|ex| {
            let (model, video) = (model.clone(), video.clone());
            std::thread::spawn(move || {
                let ex: Arc<dyn RowExchange> = Arc::new(ex);
                model.encode_halo(&video, ex, &mut |_| {}).unwrap().mean
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Every rank gets the whole latent (image-to-video needs it everywhere), equal to the untiled encode.
#[test]
fn halo_encode_equals_untiled() {
    let dev = Device::Cpu;
    for (case, world) in [("vae21", 2), ("vae22", 3), ("../golden-seed1/vae21", 3)] {
        let dir = golden(case);
        let model = Arc::new(vae::load(&dir, VaeParts::Encoder, DType::F32, &dev).unwrap());
        let video = tensor_io::read_tensor(&dir.join("inputs.safetensors"), "video", DType::F32, &dev).unwrap();
        let untiled = model.encode(&video, None, &mut |_| {}).unwrap().mean;
        for (rank, got) in halo_encode(&model, &video, world).iter().enumerate() {
            assert_close(&format!("{case} halo encode x{world} rank {rank} vs untiled"), got, &untiled, 1e-6);
        }
    }
}
