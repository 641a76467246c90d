//! The engine's front door on real worker processes: a [`Session`] runs the golden TI2V generation
//! under Ulysses 2 × CFG 2 + FSDP 4 with a halo VAE over 2 ranks — a cancel mid-denoise leaves the
//! world usable and an existing output untouched, the next run reuses the workers, sends one
//! progress event per step from rank 0 and returns the video (over the control channel) equal to
//! diffusers' golden one; the same request on a world of one gives the same video.

mod multiprocess_util;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use multiprocess_util::{init_logging, session_options};
use tessera_engine::api::{
    GenerateParams, GenerationRequest, JobEvent, Output, ParallelPlan, Prompt, Session, SessionError,
};
use tessera_engine::tensor_io;

fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline"))
}

fn request(steps: usize, plan: ParallelPlan) -> GenerationRequest {
    let inputs = golden().join("inputs.safetensors");
    let params = GenerateParams {
        height: 96,
        width: 128,
        frames: 9,
        steps,
        guidance: 5.0,
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    GenerationRequest {
        negative: Some(Prompt::Embeds(inputs.clone())),
        latents: Some(inputs.clone()),
        plan,
        ..GenerationRequest::new(golden(), Prompt::Embeds(inputs), params)
    }
}

fn rel(got: &Tensor, want: &Tensor) -> (f32, f32) {
    let d = (got - want).unwrap();
    let max = d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    (max, norm(&d) / norm(want))
}

#[test]
fn session_cancels_reuses_workers_and_matches_diffusers() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("video.safetensors");
    std::fs::write(&out, b"an earlier video").unwrap();
    let plan = ParallelPlan { ranks: 4, ulysses: 2, cfg_parallel: 2, fsdp: 4, vae_parallel: 2, ..Default::default() };
    let mut session = Session::new(session_options());
    let cancel = session.cancel_handle();
    let mut long = request(1000, plan);
    long.output = Some(Output { path: out.clone(), fps: None, latents: None });
    let err = session
        .generate(&long, &mut |e| {
            if matches!(e, JobEvent::Progress { .. }) {
                cancel.cancel();
            }
        })
        .unwrap_err();
    assert!(matches!(err, SessionError::Cancelled), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"an earlier video", "a cancelled run leaves the output alone");
    let pids = session.worker_pids();
    assert_eq!(pids.len(), 4);

    let mut steps = Vec::new();
    let mut logs = Vec::new();
    let mut req = request(4, plan);
    req.output = Some(Output { path: out.clone(), fps: None, latents: None });
    let generation = session
        .generate(&req, &mut |e| match e {
            JobEvent::Progress { rank, step, total, message } if message == "denoise" => {
                steps.push((rank.0, *step, *total))
            }
            JobEvent::Log { message, .. } => logs.push(message.clone()),
            _ => {}
        })
        .unwrap();
    assert_eq!(session.worker_pids(), pids, "the cancelled run's workers are reused");
    assert!(logs.iter().any(|l| l.starts_with("weights still loaded from the previous run")), "{logs:?}");
    assert!(generation.report.world_reused);
    assert_eq!(steps, (1..=4).map(|s| (0, s, 4)).collect::<Vec<_>>(), "one event per step, from rank 0");
    for r in &generation.report.ranks {
        let d = r.denoise.as_ref().unwrap_or_else(|| panic!("rank {}: no denoise stats", r.run.rank));
        assert_eq!(d.stats.step_seconds.len(), 4);
        assert!(d.stats.comm_calls > 0 && d.stats.transformer_bytes > 0, "rank {}: {d:?}", r.run.rank);
    }
    let want =
        tensor_io::read_tensor(&golden().join("outputs.safetensors"), "video", DType::F32, &Device::Cpu).unwrap();
    let video = generation.video.expect("a video");
    let (max, r) = rel(&video.frames, &want);
    println!("session, U2 × C2 + FSDP 4 + halo VAE 2: video max-abs {max:.2e}, rel {r:.2e} vs diffusers");
    // f32 end to end; the golden README puts a correct f32 port at 1e-5..1e-4 relative.
    assert!(r <= 1e-4, "rel {r:.2e}");
    let written = tensor_io::read_tensor(&out, "video", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(rel(&written, &video.frames).0, 0.0, "the written file is the returned video");

    // A world of one is the same path (the session restarts the workers for the new rank count).
    let single = session.generate(&request(4, ParallelPlan::default()), &mut |_| {}).unwrap();
    assert!(!single.report.world_reused);
    let (max, r) = rel(&single.video.unwrap().frames, &want);
    println!("session, one rank: video max-abs {max:.2e}, rel {r:.2e} vs diffusers");
    assert!(r <= 1e-4, "rel {r:.2e}");
    session.shutdown();
}
