//! What a creator's session survives, on real worker processes: a worker killed in the middle of
//! the VAE decode fails the run within seconds naming the rank, leaves an existing output alone, and
//! the next run works; a worker that dies while the session is idle is noticed then (not at the next
//! run) and the world is restarted. (Memory over ten runs: `session_memory.rs`, its own process.)

mod multiprocess_util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multiprocess_util::init_logging;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tessera_engine::api::{
    GenerateParams, GenerationRequest, JobEvent, Output, ParallelPlan, Prompt, Session, SessionError, SessionOptions,
};

fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline"))
}

fn options() -> SessionOptions {
    SessionOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        threads_per_rank: Some(1),
        prompt_cache_dir: None,
        ..SessionOptions::default()
    }
}

/// The golden model on 2 ranks (Ulysses 2, halo VAE over both), seeded noise.
fn request(height: usize, width: usize, frames: usize, steps: usize, seed: u64) -> GenerationRequest {
    let inputs = golden().join("inputs.safetensors");
    let params = GenerateParams {
        height,
        width,
        frames,
        steps,
        guidance: 5.0,
        guidance_2: None,
        shift: None,
        seed,
        scheduler: None,
        sigmas: None,
    };
    GenerationRequest {
        negative: Some(Prompt::Embeds(inputs.clone())),
        plan: ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 2, ..ParallelPlan::default() },
        ..GenerationRequest::new(golden(), Prompt::Embeds(inputs), params)
    }
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
}

#[test]
fn a_worker_killed_mid_decode_fails_fast_and_the_next_run_works() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("video.safetensors");
    std::fs::write(&out, b"yesterday's video").unwrap();
    let mut session = Session::new(options());
    // 33 frames: 9 latent frames, decoded chunk by chunk; rank 1 dies after the first chunk.
    let mut req = request(192, 256, 33, 1, 1);
    req.output = Some(Output { path: out.clone(), fps: None, latents: None });
    session.generate(&request(64, 64, 1, 1, 0), &mut |_| {}).unwrap();
    let pids = session.worker_pids();
    let mut killed_at = None;
    let err = session
        .generate(&req, &mut |e| {
            if let JobEvent::Progress { message, step, .. } = e {
                if message == "decode" && *step >= 1 && killed_at.is_none() {
                    sigkill(pids[1]);
                    killed_at = Some(Instant::now());
                }
            }
        })
        .unwrap_err();
    let killed_at = killed_at.expect("the decode reported progress before failing");
    let took = killed_at.elapsed();
    println!("rank 1 killed mid-decode: the run failed {:.2} s later: {err}", took.as_secs_f64());
    assert!(matches!(err, SessionError::Runtime(_)), "{err}");
    assert!(err.to_string().contains("Rank 1"), "the message names the rank: {err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"yesterday's video", "a failed run leaves the output alone");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no partial file: {leftovers:?}");

    let again = session.generate(&req, &mut |_| {}).unwrap();
    assert!(!again.report.world_reused, "the broken world was replaced");
    assert_ne!(session.worker_pids(), pids);
    assert!(std::fs::read(&out).unwrap().len() > 1000, "the next run wrote its video");
    session.shutdown();
}

#[test]
fn a_worker_dying_while_idle_is_noticed_and_the_world_restarted() {
    init_logging();
    let mut session = Session::new(options());
    session.generate(&request(64, 64, 1, 1, 0), &mut |_| {}).unwrap();
    assert_eq!(session.check_idle(), None, "a healthy idle world");
    let pids = session.worker_pids();
    sigkill(pids[1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let noticed = loop {
        if let Some(message) = session.check_idle() {
            break message;
        }
        assert!(Instant::now() < deadline, "the death of rank 1 went unnoticed");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("noticed while idle: {noticed}");
    assert!(noticed.contains("Rank 1") && noticed.contains("signal 9"), "{noticed}");
    assert!(session.worker_pids().is_empty(), "the rest of the world was stopped");
    let mut stages = Vec::new();
    let next = session
        .generate(&request(64, 64, 1, 1, 0), &mut |e| {
            if let JobEvent::Stage { message } = e {
                stages.push(message.clone());
            }
        })
        .unwrap();
    assert!(!next.report.world_reused);
    assert!(stages.iter().any(|s| s.starts_with("starting 2 CPU workers")), "{stages:?}");
    session.shutdown();
}
