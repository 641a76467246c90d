//! What a creator's session survives, on real worker processes: a worker killed in the middle of
//! the VAE decode fails the run within seconds naming the rank, leaves an existing output alone, and
//! the next run works; a worker that dies while the session is idle is noticed then (not at the next
//! run) and the world is restarted; ten runs on one session keep worker and host memory flat.

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
    let params = GenerateParams { height, width, frames, steps, guidance: 5.0, guidance_2: None, shift: None, seed };
    GenerationRequest {
        negative: Some(Prompt::Embeds(inputs.clone())),
        plan: ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 2, ..ParallelPlan::default() },
        ..GenerationRequest::new(golden(), Prompt::Embeds(inputs), params)
    }
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
}

/// Resident set of a process (`VmRSS`), bytes.
fn rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn a_worker_killed_mid_decode_fails_fast_and_the_next_run_works() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("video.mp4");
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

#[test]
fn ten_runs_on_one_session_keep_memory_flat() {
    init_logging();
    let mut session = Session::new(options());
    let me = std::process::id().to_string();
    let mut rows: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut reload = Vec::new();
    for run in 0..10u64 {
        // Another seed each run: new noise, same model and plan.
        let g = session.generate(&request(96, 128, 9, 2, run), &mut |_| {}).unwrap();
        assert_eq!(g.report.world_reused, run > 0);
        for r in &g.report.ranks {
            let reused = r.denoise.as_ref().map(|d| d.stats.weights_reused);
            assert_eq!(reused, Some(run > 0), "run {run} rank {}: weights reused only after the first run", r.run.rank);
        }
        reload.push(g.report.ranks[0].run.phases.iter().find(|p| p.name == "load").map(|p| p.seconds).unwrap_or(0.0));
        let workers = session.worker_pids().iter().map(|p| rss(&p.to_string())).collect();
        rows.push((rss(&me), workers));
    }
    let first = reload[0];
    let later = reload[1..].iter().sum::<f64>() / 9.0;
    println!("load phase: {first:.3} s on the first run, {later:.4} s on average after (weights kept): {:.3} s saved per run", first - later);
    println!("| run | host RSS MiB | worker RSS MiB | load s |");
    for (i, (host, workers)) in rows.iter().enumerate() {
        let mib = |b: &u64| format!("{:.1}", *b as f64 / (1 << 20) as f64);
        println!(
            "| {} | {} | {} | {:.3} |",
            i + 1,
            mib(host),
            workers.iter().map(mib).collect::<Vec<_>>().join(", "),
            reload[i]
        );
    }
    let (second, last) = (&rows[1], &rows[9]);
    let growth = |a: u64, b: u64| b as f64 / a as f64 - 1.0;
    assert!(growth(second.0, last.0) <= 0.05, "host RSS grew {:.1}%", 100.0 * growth(second.0, last.0));
    for (r, (a, b)) in second.1.iter().zip(&last.1).enumerate() {
        assert!(growth(*a, *b) <= 0.05, "rank {r} RSS grew {:.1}% ({a} -> {b})", 100.0 * growth(*a, *b));
    }
    session.shutdown();
}
