//! `Job::Generate` driven through the `Supervisor` API (as the studio does) on real worker
//! processes: per-step progress from rank 0, statistics from every rank, a cancel mid-denoise that
//! leaves the world usable, and the next job's video equal to diffusers' golden one.

mod multiprocess_util;

use std::path::PathBuf;

use candle_core::{DType, Device};
use multiprocess_util::{init_logging, spec};
use tessera_engine::parallel::plan::ParallelPlan;
use tessera_engine::pipeline::GenerateParams;
use tessera_engine::runtime::protocol::{EmbedsSource, GenerateSpec};
use tessera_engine::runtime::{Job, JobEvent, JobOutput, RuntimeError, Supervisor};
use tessera_engine::tensor_io;

fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline"))
}

fn job(steps: usize, out: PathBuf) -> Job {
    let inputs = golden().join("inputs.safetensors");
    let file = |name: &str| EmbedsSource::File { path: inputs.clone(), name: name.into() };
    Job::Generate(Box::new(GenerateSpec {
        model: golden(),
        params: GenerateParams {
            height: 96,
            width: 128,
            frames: 9,
            steps,
            guidance: 5.0,
            guidance_2: None,
            shift: None,
            seed: 0,
        },
        plan: ParallelPlan { ranks: 4, ulysses: 2, cfg_parallel: 2, fsdp: 4, vae_parallel: 2, ..Default::default() },
        prompt: file("prompt_embeds"),
        negative: Some(file("negative_prompt_embeds")),
        image: None,
        latents: Some(inputs.clone()),
        out,
        save_latents: None,
        fps: None,
        decode: true,
    }))
}

#[test]
fn generate_job_reports_cancels_and_reruns() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let mut sup = Supervisor::spawn(spec(4)).unwrap();
    let cancel = sup.cancel_handle();
    let out = tmp.path().join("video.safetensors");
    let mut requested = false;
    let err = sup
        .run_job(job(1000, out.clone()), |e| {
            if !requested && matches!(e, JobEvent::Progress { .. }) {
                cancel.cancel();
                requested = true;
            }
        })
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Cancelled), "{err}");
    assert!(!out.exists(), "a cancelled job writes nothing");

    let mut steps = Vec::new();
    let result = sup
        .run_job(job(4, out.clone()), |e| {
            if let JobEvent::Progress { rank, step, total, message } = e {
                if message == "denoise" {
                    steps.push((rank.0, *step, *total));
                }
            }
        })
        .unwrap();
    assert_eq!(steps, (1..=4).map(|s| (0, s, 4)).collect::<Vec<_>>(), "one event per step, from rank 0");
    for (r, o) in result.outputs.iter().enumerate() {
        let JobOutput::Generate(s) = o else { panic!("rank {r}: {o:?}") };
        assert_eq!(s.step_seconds.len(), 4);
        assert!(s.comm_calls > 0 && s.transformer_bytes > 0, "rank {r}: {s:?}");
    }
    let got = tensor_io::read_tensor(&out, "video", DType::F32, &Device::Cpu).unwrap();
    let want =
        tensor_io::read_tensor(&golden().join("outputs.safetensors"), "video", DType::F32, &Device::Cpu).unwrap();
    let diff = (got - &want).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let rel = diff / want.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    println!("generate job after a cancel, U2 × C2 + FSDP 4 + halo VAE 2: rel {rel:.2e} vs diffusers");
    assert!(rel <= 1e-3, "rel {rel:.2e}");
    sup.shutdown();
}
