//! Tiles mode (whole diffusers tiles spread over ranks, strips exchanged for the blend) equals the
//! single-device tiled decode/encode *bit for bit*, on ranks that are threads of this process
//! (`ThreadComm`); worker processes run the same code over the socket collectives (see
//! `tests/tests/cli_vae.rs`). Also: pieces are reported on the rank that made them, ranks beyond the
//! tile count idle, and encode results reach every rank.
//!
//! Tolerance: bitwise against our single-device tiled decode (same tile decodes, same blend
//! arithmetic in the same order); 1e-4 relative against diffusers (the project's f32 budget).

mod common;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use common::{assert_close, golden};
use tessera_engine::models::wan::vae::tiling::TilePlan;
use tessera_engine::models::wan::vae::{self, AutoencoderKLWan, Tiling, VaeParts};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::parallel::plan::VaeMode;
use tessera_engine::tensor_io;

fn tiling_of(dir: &std::path::Path) -> Tiling {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let g = |k: &str| v["tiling"][k].as_u64().unwrap() as usize;
    Tiling {
        tile_sample_min_height: g("tile_sample_min_height"),
        tile_sample_min_width: g("tile_sample_min_width"),
        tile_sample_stride_height: g("tile_sample_stride_height"),
        tile_sample_stride_width: g("tile_sample_stride_width"),
    }
}

/// Runs `f` on `world` thread ranks; returns each rank's result in rank order.
fn on_ranks<T: Send + 'static>(world: usize, f: impl Fn(Arc<dyn Collective>) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = ThreadComm::world(world, std::time::Duration::from_secs(60))
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

fn check_decode(dir: std::path::PathBuf, name: &str, worlds: &[usize]) {
    let dev = Device::Cpu;
    let model = Arc::new(vae::load(&dir, VaeParts::Decoder, DType::F32, &dev).unwrap());
    let z = tensor_io::read_tensor(&dir.join("inputs.safetensors"), "latents", DType::F32, &dev).unwrap();
    let tiling = tiling_of(&dir);
    let single = model.decode(&z, Some(&tiling), &mut |_| {}).unwrap();
    let want = tensor_io::read_tensor(&dir.join("outputs.safetensors"), "decoded_tiled", DType::F32, &dev).unwrap();
    let (_, _, _, h, w) = z.dims5().unwrap();
    let cfg = model.config();
    let tiles = TilePlan::for_decode(&tiling, h, w, cfg.scale_factor_spatial, cfg.patch()).tiles().len();
    for &world in worlds {
        let (m, zz) = (model.clone(), z.clone());
        let pieces = Arc::new(Mutex::new(vec![0usize; world]));
        let counted = pieces.clone();
        let outs = on_ranks(world, move |comm| {
            let rank = comm.rank().0;
            let mut on_piece = |p: vae::parallel::DecodedPiece<'_>| {
                assert_eq!(p.mode, VaeMode::Tiles);
                assert_eq!(p.data.h * p.data.w, p.out_rows.len() * p.out_cols.len());
                counted.lock().unwrap()[rank] += 1;
            };
            m.decode_parallel(&zz, &comm, VaeMode::Tiles, Some(&tiling), &mut |_| {}, &mut on_piece).unwrap()
        });
        let got = outs[0].as_ref().expect("rank 0 assembles the video");
        assert!(outs[1..].iter().all(Option::is_none), "only rank 0 returns the video");
        assert!(bitwise_equal(got, &single), "{name}: tiles x{world} differs from the single-device tiled decode");
        println!("{name}: tiles x{world} bit-identical to the single-device tiled decode ({tiles} tiles)");
        assert_close(&format!("{name} tiles x{world} vs diffusers tiled"), got, &want, 1e-4);
        let pieces = pieces.lock().unwrap().clone();
        assert_eq!(pieces.iter().sum::<usize>(), tiles, "{name} x{world}: one piece per tile, got {pieces:?}");
        if world > tiles {
            assert!(pieces[tiles..].iter().all(|n| *n == 0), "ranks past the tile count must idle: {pieces:?}");
        }
    }
}

#[test]
fn tiles_decode_is_bit_identical_to_single_device_tiled_wan21() {
    // 3×3 tiles: 1..4 ranks and more ranks than tiles.
    check_decode(golden("vae21"), "vae21", &[1, 2, 3, 4, 10]);
}

#[test]
fn tiles_decode_is_bit_identical_to_single_device_tiled_wan22() {
    check_decode(golden("vae22"), "vae22", &[1, 2, 3, 4]);
    check_decode(golden("../golden-seed1/vae22"), "seed1/vae22", &[3]);
}

fn check_encode(dir: std::path::PathBuf, name: &str, world: usize) {
    let dev = Device::Cpu;
    let model: Arc<AutoencoderKLWan> = Arc::new(vae::load(&dir, VaeParts::Encoder, DType::F32, &dev).unwrap());
    let video = tensor_io::read_tensor(&dir.join("inputs.safetensors"), "video", DType::F32, &dev).unwrap();
    let tiling = tiling_of(&dir);
    let single_tiled = model.encode(&video, Some(&tiling), &mut |_| {}).unwrap();
    let single = model.encode(&video, None, &mut |_| {}).unwrap();
    for mode in [VaeMode::Tiles, VaeMode::Halo] {
        let (m, v) = (model.clone(), video.clone());
        let outs = on_ranks(world, move |comm| {
            let t = (mode == VaeMode::Tiles).then_some(tiling);
            m.encode_parallel(&v, &comm, mode, t.as_ref(), &mut |_| {}).unwrap()
        });
        for (rank, got) in outs.iter().enumerate() {
            match mode {
                VaeMode::Tiles => {
                    assert!(
                        bitwise_equal(&got.mean, &single_tiled.mean)
                            && bitwise_equal(&got.logvar, &single_tiled.logvar),
                        "{name}: tiles encode x{world} on rank {rank} differs from the single-device tiled encode"
                    );
                }
                VaeMode::Halo => {
                    assert_close(&format!("{name} halo encode x{world} rank {rank}"), &got.mean, &single.mean, 1e-6)
                }
            }
        }
        println!("{name}: {mode} encode x{world}: every rank holds the moments");
    }
}

#[test]
fn parallel_encode_reaches_every_rank() {
    check_encode(golden("vae21"), "vae21", 3);
    check_encode(golden("vae22"), "vae22", 2);
}

#[test]
fn halo_with_tiling_is_refused() {
    let dev = Device::Cpu;
    let model = Arc::new(vae::load(&golden("vae22"), VaeParts::Decoder, DType::F32, &dev).unwrap());
    let z = Tensor::zeros((1, 8, 1, 4, 4), DType::F32, &dev).unwrap();
    let comm: Arc<dyn Collective> = Arc::new(ThreadComm::world(1, std::time::Duration::from_secs(5)).remove(0));
    let err = model
        .decode_parallel(&z, &comm, VaeMode::Halo, Some(&Tiling::default()), &mut |_| {}, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("drop the tiling"), "{err}");
}
