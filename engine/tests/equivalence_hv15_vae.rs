//! HV1.5 VAE patch parallelism on ranks that are threads of this process (`ThreadComm`; worker
//! processes run the same code over the socket collectives, see `tests/tests/cli_hv15_vae.rs`):
//! - `tiles` equals the single-device tiled decode/encode *bit for bit* (same tile decodes, same
//!   blend arithmetic in the same order), and diffusers' tiled output within 1e-4;
//! - `halo` (row slabs, one halo row per conv, replicate at the global edges, gathered K/V for the
//!   mid attention) equals the untiled decode/encode within f32 rounding (1e-5 relative: the same
//!   taps; only the attention's matmul over a slab's query rows rounds differently, as gemm picks
//!   its micro-tiles by row count: measured 0 for 2 even slabs, ≤ 6.2e-7 relative for 3–4), and
//!   diffusers' untiled output within 1e-4;
//! - on the golden case and on other shapes (odd latent sizes, three latent frames, uneven slabs).

mod common;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use tessera_engine::models::hv15::vae::{self, AutoencoderKLHunyuanVideo15};
use tessera_engine::models::wan::vae::{Tiling, VaeParts};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::parallel::plan::VaeMode;
use tessera_engine::tensor_io;

/// Halo vs untiled: f32 rounding of the attention's matmul (see the module doc), with headroom.
const HALO_TOL: f64 = 1e-5;

fn case() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/vae")
}

fn tiling() -> Tiling {
    Tiling::parse("64,64,48,48").unwrap()
}

fn on_ranks<T: Send + 'static>(world: usize, f: impl Fn(Arc<dyn Collective>) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = ThreadComm::world(world, std::time::Duration::from_secs(120))
        .into_iter()
        .map(|comm| {
            let f = f.clone();
            std::thread::spawn(move || f(Arc::new(comm)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn bitwise_equal(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn model() -> Arc<AutoencoderKLHunyuanVideo15> {
    Arc::new(vae::load(&case(), VaeParts::Both, DType::F32, &Device::Cpu).unwrap())
}

fn input(name: &str) -> Tensor {
    tensor_io::read_tensor(&case().join("inputs.safetensors"), name, DType::F32, &Device::Cpu).unwrap()
}

fn output(name: &str) -> Tensor {
    tensor_io::read_tensor(&case().join("outputs.safetensors"), name, DType::F32, &Device::Cpu).unwrap()
}

/// Decodes on `world` ranks; returns rank 0's video and every rank's piece count.
fn decode_on(
    model: &Arc<AutoencoderKLHunyuanVideo15>,
    z: &Tensor,
    world: usize,
    mode: VaeMode,
) -> (Tensor, Vec<usize>) {
    let (model, z) = (model.clone(), z.clone());
    let outs = on_ranks(world, move |comm| {
        let pieces = Mutex::new(0usize);
        let tl = (mode == VaeMode::Tiles).then(tiling);
        let video = model
            .decode_parallel(&z, &comm, mode, tl.as_ref(), &mut |_| {}, &mut |_| *pieces.lock().unwrap() += 1)
            .unwrap();
        (video, pieces.into_inner().unwrap())
    });
    let pieces = outs.iter().map(|(_, p)| *p).collect();
    let mut videos: Vec<Option<Tensor>> = outs.into_iter().map(|(v, _)| v).collect();
    assert!(videos[1..].iter().all(Option::is_none), "only rank 0 assembles the video");
    (videos.remove(0).expect("rank 0 returns the video"), pieces)
}

fn encode_on(model: &Arc<AutoencoderKLHunyuanVideo15>, video: &Tensor, world: usize, mode: VaeMode) -> Vec<Tensor> {
    let (model, video) = (model.clone(), video.clone());
    on_ranks(world, move |comm| {
        let tl = (mode == VaeMode::Tiles).then(tiling);
        model.encode_parallel(&video, &comm, mode, tl.as_ref(), &mut |_| {}).unwrap().mean
    })
}

#[test]
fn tiles_decode_is_bitwise_the_single_device_tiled_decode() {
    let model = model();
    let z = input("latents");
    let single = model.decode(&z, Some(&tiling()), &mut |_| {}).unwrap();
    for world in [2, 3, 4] {
        let (got, pieces) = decode_on(&model, &z, world, VaeMode::Tiles);
        assert!(bitwise_equal(&got, &single), "tiles x{world} differs from the single-device tiled decode");
        assert_close(&format!("tiles decode x{world} vs diffusers tiled"), &got, &output("decoded_tiled"), 1e-4);
        assert_eq!(pieces.iter().sum::<usize>(), 4, "a 2x2 tile grid gives 4 pieces: {pieces:?}");
    }
}

#[test]
fn halo_decode_equals_untiled() {
    let model = model();
    let z = input("latents");
    let untiled = model.decode(&z, None, &mut |_| {}).unwrap();
    for world in [2, 3, 4] {
        let (got, pieces) = decode_on(&model, &z, world, VaeMode::Halo);
        assert_close(&format!("halo decode x{world} vs untiled"), &got, &untiled, HALO_TOL);
        assert_close(&format!("halo decode x{world} vs diffusers"), &got, &output("decoded"), 1e-4);
        // One piece per latent chunk (2 latent frames) on every rank.
        assert_eq!(pieces, vec![2; world], "halo x{world}");
    }
}

#[test]
fn parallel_encode_reaches_every_rank() {
    let model = model();
    let video = input("video");
    let untiled = model.encode(&video, None, &mut |_| {}).unwrap().mean;
    let tiled = model.encode(&video, Some(&tiling()), &mut |_| {}).unwrap().mean;
    for world in [2, 4] {
        for (rank, got) in encode_on(&model, &video, world, VaeMode::Halo).iter().enumerate() {
            assert_close(&format!("halo encode x{world} rank {rank} vs untiled"), got, &untiled, HALO_TOL);
        }
        for (rank, got) in encode_on(&model, &video, world, VaeMode::Tiles).iter().enumerate() {
            assert!(bitwise_equal(got, &tiled), "tiles encode x{world} rank {rank} differs from single-device tiled");
        }
    }
    let image = input("image");
    let want = model.encode(&image, None, &mut |_| {}).unwrap().mean;
    for got in encode_on(&model, &image, 3, VaeMode::Halo) {
        assert_close("halo image encode x3 vs untiled", &got, &want, HALO_TOL);
    }
}

/// Other shapes than the fixture: 3 latent frames, odd latent rows/cols (uneven slabs, clipped
/// edge tiles), seeded random inputs.
#[test]
fn other_shapes_agree_across_modes() {
    let model = model();
    let dev = Device::Cpu;
    let z = Tensor::randn(0f32, 1f32, (1, 4, 3, 5, 7), &dev).unwrap();
    let untiled = model.decode(&z, None, &mut |_| {}).unwrap();
    let tiled = model.decode(&z, Some(&tiling()), &mut |_| {}).unwrap();
    let (halo, _) = decode_on(&model, &z, 3, VaeMode::Halo);
    assert_close("5x7 latents: halo x3 vs untiled", &halo, &untiled, HALO_TOL);
    let (tiles, _) = decode_on(&model, &z, 4, VaeMode::Tiles);
    assert!(bitwise_equal(&tiles, &tiled), "5x7 latents: tiles x4 differs from the single-device tiled decode");
    let video = Tensor::randn(0f32, 0.5f32, (1, 3, 9, 80, 112), &dev).unwrap();
    let untiled = model.encode(&video, None, &mut |_| {}).unwrap().mean;
    for got in encode_on(&model, &video, 2, VaeMode::Halo) {
        assert_close("80x112 video: halo encode x2 vs untiled", &got, &untiled, HALO_TOL);
    }
}

#[test]
fn halo_needs_a_latent_row_per_rank() {
    let model = model();
    let z = Tensor::zeros((1, 4, 1, 2, 3), DType::F32, &Device::Cpu).unwrap();
    let errs = on_ranks(3, move |comm| {
        model.decode_parallel(&z, &comm, VaeMode::Halo, None, &mut |_| {}, &mut |_| {}).unwrap_err().to_string()
    });
    assert!(errs[0].contains("use at most 2 ranks"), "{}", errs[0]);
}
