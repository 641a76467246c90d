//! HV1.5 VAE patch parallelism on real `tessera-worker` processes (socket collectives), one world of
//! 4 ranks with 2–4 of them taking part (`vae_parallel`): tiles decode equals the in-process
//! single-device tiled decode bit for bit, halo decode the untiled decode within f32 rounding;
//! encode in both modes; every finished piece arrives as a `VaePiece` event from the rank that made it.
//!
//! Tolerances as in `equivalence_hv15_vae.rs`: tiles bitwise; halo 1e-5 relative (the attention's
//! matmul over a slab's query rows rounds differently); tiles encode 0 (bitwise); against diffusers 1e-4.

mod common;
mod multiprocess_util;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use multiprocess_util::spec;
use tessera_engine::models::hv15::vae;
use tessera_engine::models::wan::vae::{Tiling, VaeParts};
use tessera_engine::parallel::plan::VaeMode;
use tessera_engine::runtime::protocol::{VaeDecodeSpec, VaeEncodeSpec};
use tessera_engine::runtime::{Job, JobEvent, Supervisor};
use tessera_engine::tensor_io;

fn case() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/vae")
}

fn read(path: &Path, name: &str) -> Tensor {
    tensor_io::read_tensor(path, name, DType::F32, &Device::Cpu).unwrap()
}

/// Runs `job`; returns the (rank, piece index, chunk) of every `VaePiece` event.
fn run(sup: &mut Supervisor, job: Job) -> Vec<(usize, usize, Option<usize>)> {
    let mut pieces = Vec::new();
    sup.run_job(job, |e| {
        if let JobEvent::VaePiece { rank, piece } = e {
            assert!(
                piece.preview.width > 0
                    && piece.preview.rgb.len() == 3 * (piece.preview.width * piece.preview.height) as usize
            );
            pieces.push((rank.0, piece.index, piece.latent_chunk));
        }
    })
    .unwrap();
    pieces
}

#[test]
fn hv15_vae_patch_parallel_on_worker_processes() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let inputs = case().join("inputs.safetensors");
    let outputs = case().join("outputs.safetensors");
    let model = vae::load(&case(), VaeParts::Both, DType::F32, &dev).unwrap();
    let tiling = Tiling::parse("64,64,48,48").unwrap();
    let z = read(&inputs, "latents");
    let single_tiled = model.decode(&z, Some(&tiling), &mut |_| {}).unwrap();
    let untiled = model.decode(&z, None, &mut |_| {}).unwrap();
    let mut sup = Supervisor::spawn(spec(4)).unwrap();

    for (mode, n) in [(VaeMode::Tiles, 3), (VaeMode::Halo, 4), (VaeMode::Halo, 2)] {
        let out = dir.path().join(format!("dec-{mode:?}-{n}.safetensors"));
        let tl = (mode == VaeMode::Tiles).then_some([64, 64, 48, 48]);
        let job = VaeDecodeSpec {
            model: case(),
            latents: inputs.clone(),
            out: out.clone(),
            mode,
            tiling: tl,
            vae_parallel: Some(n),
        };
        let pieces = run(&mut sup, Job::VaeDecode(job));
        let got = read(&out, "video");
        match mode {
            VaeMode::Tiles => {
                let same = got.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == single_tiled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(same, "tiles on {n} workers differs from the single-device tiled decode");
                assert_close(
                    &format!("tiles decode on {n} workers vs diffusers tiled"),
                    &got,
                    &read(&outputs, "decoded_tiled"),
                    1e-4,
                );
                let mut tiles: Vec<usize> = pieces.iter().map(|p| p.1).collect();
                tiles.sort();
                assert_eq!(tiles, vec![0, 1, 2, 3], "every tile once: {pieces:?}");
                assert!(pieces.iter().all(|p| p.0 < n && p.2.is_none()), "{pieces:?}");
            }
            VaeMode::Halo => {
                assert_close(&format!("halo decode on {n} workers vs untiled"), &got, &untiled, 1e-5);
                assert_close(
                    &format!("halo decode on {n} workers vs diffusers"),
                    &got,
                    &read(&outputs, "decoded"),
                    1e-4,
                );
                // One slab per rank per latent chunk (2 latent frames), index = the slab's rank.
                assert_eq!(pieces.len(), 2 * n, "{pieces:?}");
                assert!(pieces.iter().all(|p| p.0 == p.1 && p.2.is_some()), "{pieces:?}");
            }
        }
    }

    let video = read(&inputs, "video");
    let untiled = model.encode(&video, None, &mut |_| {}).unwrap();
    let tiled = model.encode(&video, Some(&tiling), &mut |_| {}).unwrap();
    for (mode, want, tol) in [(VaeMode::Halo, &untiled, 1e-5f64), (VaeMode::Tiles, &tiled, 0.0)] {
        let out = dir.path().join(format!("enc-{mode:?}.safetensors"));
        let tl = (mode == VaeMode::Tiles).then_some([64, 64, 48, 48]);
        let job = VaeEncodeSpec {
            model: case(),
            video: inputs.clone(),
            out: out.clone(),
            mode,
            tiling: tl,
            vae_parallel: None,
        };
        run(&mut sup, Job::VaeEncode(job));
        assert_close(&format!("{mode:?} encode mean on 4 workers"), &read(&out, "mean"), &want.mean, tol);
        assert_close(&format!("{mode:?} encode logvar on 4 workers"), &read(&out, "logvar"), &want.logvar, tol);
    }
    sup.shutdown();
}
