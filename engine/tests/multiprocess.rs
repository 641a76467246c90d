//! Supervision of real `tessera-worker` processes: handshake, events and reports, cancel and rerun,
//! workers that die or fail mid-job, handshake timeouts, and no orphans (also when the parent dies).

mod multiprocess_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use multiprocess_util::{assert_no_orphans, check_collective, init_logging, spec};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tessera_engine::parallel::comm::check::{CheckSpec, CollectiveOp};
use tessera_engine::parallel::comm::wire::WireDType;
use tessera_engine::parallel::comm::ReduceOp;
use tessera_engine::parallel::Rank;
use tessera_engine::runtime::protocol::{BenchSpec, Diagnostic};
use tessera_engine::runtime::{Job, JobEvent, JobOutput, RunReport, RuntimeError, Supervisor};

fn pids(sup: &Supervisor) -> Vec<u32> {
    sup.workers().iter().map(|w| w.pid).collect()
}

/// A bench that runs far longer than any test: something to interrupt mid-collective.
fn endless_bench() -> Job {
    Job::CommBench(BenchSpec {
        ops: vec![CollectiveOp::AllReduce(ReduceOp::Sum)],
        sizes_bytes: vec![1 << 20; 100_000],
        dtype: WireDType::F32,
        iters: 2,
        warmup: 0,
    })
}

/// The rank→GPU map reaches each worker process (it opens and reports that ordinal); 3 ranks on a
/// map of 2 wrap around, as several ranks sharing one GPU through sockets do.
#[test]
fn rank_to_device_map_reaches_every_worker() {
    init_logging();
    let sup = Supervisor::spawn(tessera_engine::runtime::WorldSpec { gpus: vec![1, 0], ..spec(3) }).unwrap();
    let ordinals: Vec<usize> = sup.workers().iter().map(|w| w.device.ordinal).collect();
    assert_eq!(ordinals, vec![1, 0, 1]);
    sup.shutdown();
}

#[test]
fn ping_reaches_every_rank_and_shutdown_cleans_up() {
    init_logging();
    let mut sup = Supervisor::spawn(spec(3)).unwrap();
    let workers = sup.workers();
    assert_eq!(workers.len(), 3);
    let dir = sup.rendezvous_dir().to_path_buf();
    assert!(dir.exists());
    let result = sup.run_job(Job::Ping, |_| {}).unwrap();
    for (rank, out) in result.outputs.iter().enumerate() {
        assert_eq!(out, &JobOutput::Pong { rank: Rank(rank), pid: workers[rank].pid });
    }
    assert_eq!(result.report.ranks.len(), 3);
    assert!(result.report.ranks.iter().all(|r| r.device == "cpu"));
    let pids = pids(&sup);
    drop(sup);
    assert_no_orphans(&pids, Duration::from_secs(5));
    assert!(!dir.exists(), "rendezvous dir left behind: {}", dir.display());
}

#[test]
fn telemetry_events_and_json_report() {
    init_logging();
    let mut sup = Supervisor::spawn(spec(2)).unwrap();
    let bench = Job::CommBench(BenchSpec {
        ops: vec![CollectiveOp::AllReduce(ReduceOp::Sum), CollectiveOp::AllGather { dim: 0 }],
        sizes_bytes: vec![4 << 20],
        dtype: WireDType::F32,
        iters: 20,
        warmup: 1,
    });
    let mut events = Vec::new();
    let result = sup.run_job(bench, |e| events.push(e.clone())).unwrap();
    let memory: Vec<_> = events.iter().filter(|e| matches!(e, JobEvent::Memory { .. })).collect();
    let phases: Vec<_> = events.iter().filter(|e| matches!(e, JobEvent::PhaseSpan { .. })).collect();
    println!("{} memory samples, {} phase spans, wall {:.2} s", memory.len(), phases.len(), result.report.wall_seconds);
    for rank in [Rank(0), Rank(1)] {
        let peak = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Memory { rank: r, peak_bytes, rss_bytes, .. } if *r == rank => {
                    Some((*peak_bytes, *rss_bytes))
                }
                _ => None,
            })
            .max();
        let (peak, rss) = peak.unwrap_or_else(|| panic!("no memory sample from rank {rank}"));
        // Each rank holds at least its 4 MiB input and the 4 MiB result; the allocator counts them.
        assert!(peak >= 8 << 20, "rank {rank}: heap peak {peak} B");
        assert!(rss > peak / 2, "rank {rank}: rss {rss} B");
    }
    assert_eq!(phases.len(), 4, "one phase per op per rank");
    assert!(matches!(events.first(), Some(JobEvent::Started { world_size: 2 })));
    assert!(matches!(events.last(), Some(JobEvent::Finished { .. })));
    let JobOutput::Bench(rows) = &result.outputs[0] else { panic!("rank 0 returns the table") };
    assert_eq!(rows.len(), 2);

    let file = tempfile::NamedTempFile::new().unwrap();
    result.report.write_json(file.path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap();
    assert!(json["wall_seconds"].as_f64().unwrap() > 0.0);
    let ranks = json["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2);
    for r in ranks {
        assert_eq!(r["device"], "cpu");
        assert!(r["peak_bytes"].as_u64().unwrap() >= 8 << 20, "{r}");
        assert_eq!(r["weights_bytes"], 0);
        let phases = r["phases"].as_array().unwrap();
        assert_eq!(phases.len(), 2);
        assert!(phases.iter().all(|p| p["seconds"].as_f64().unwrap() > 0.0 && p["peak_bytes"].as_u64().unwrap() > 0));
    }
    let back: RunReport = serde_json::from_value(json).unwrap();
    assert_eq!(back.ranks[1].rank, 1);
}

#[test]
fn killed_worker_mid_collective_fails_fast_and_leaves_no_orphans() {
    init_logging();
    let mut sup = Supervisor::spawn(spec(3)).unwrap();
    let pids = pids(&sup);
    let victim = pids[1];
    let mut killed_at = None;
    let err = sup
        .run_job(endless_bench(), |e| {
            if killed_at.is_none() && matches!(e, JobEvent::Progress { .. }) {
                kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
                killed_at = Some(Instant::now());
            }
        })
        .unwrap_err();
    let took = killed_at.expect("the bench made progress").elapsed();
    println!("kill -9 rank 1 → {err} after {:.3} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(10));
    match &err {
        RuntimeError::WorkerExited { rank, status } => {
            assert_eq!(*rank, Rank(1));
            assert_eq!(status, "signal 9 (SIGKILL)");
        }
        other => panic!("expected WorkerExited, got {other}"),
    }
    assert!(err.to_string().contains("rank 1"));
    assert_no_orphans(&pids, Duration::from_secs(5));
    assert!(!sup.is_up());
    assert!(matches!(sup.run_job(Job::Ping, |_| {}), Err(RuntimeError::WorldDown { .. })));
}

#[test]
fn exit_and_abort_mid_job_are_named_with_their_status() {
    init_logging();
    for (diagnostic, rank, status) in [
        (Diagnostic::Exit { rank: Some(Rank(2)), code: 7 }, Rank(2), "exit code 7"),
        (Diagnostic::Abort { rank: Rank(0) }, Rank(0), "signal 6 (SIGABRT)"),
    ] {
        let mut sup = Supervisor::spawn(spec(3)).unwrap();
        let pids = pids(&sup);
        let start = Instant::now();
        let mut failed_events = Vec::new();
        let err = sup
            .run_job(Job::Diagnostic(diagnostic), |e| {
                if let JobEvent::Failed { rank, .. } = e {
                    failed_events.push(*rank);
                }
            })
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(err.to_string(), format!("rank {} exited: {status}", rank.0));
        assert_eq!(failed_events, vec![Some(rank)]);
        assert_no_orphans(&pids, Duration::from_secs(5));
    }
}

#[test]
fn job_errors_and_panics_come_back_as_messages() {
    init_logging();
    let cases = [
        (Diagnostic::Fail { rank: Rank(1), message: "bad latents shape [1, 2]".into() }, "bad latents shape [1, 2]"),
        (Diagnostic::Panic { rank: Rank(1) }, "panicked: diagnostic panic requested for rank 1"),
    ];
    for (diagnostic, expected) in cases {
        let mut sup = Supervisor::spawn(spec(2)).unwrap();
        let pids = pids(&sup);
        match sup.run_job(Job::Diagnostic(diagnostic), |_| {}) {
            Err(RuntimeError::WorkerFailed { rank, message }) => {
                assert_eq!(rank, Rank(1));
                assert_eq!(message, expected);
            }
            other => panic!("expected WorkerFailed, got {other:?}"),
        }
        // The world is stopped (the other rank was waiting in a collective).
        assert_no_orphans(&pids, Duration::from_secs(5));
    }
}

#[test]
fn cancel_returns_every_rank_to_idle_and_the_world_takes_the_next_job() {
    init_logging();
    let mut sup = Supervisor::spawn(spec(3)).unwrap();
    let pids_before = pids(&sup);
    let cancel = sup.cancel_handle();
    for round in 0..2 {
        let mut requested = None;
        let err = sup
            .run_job(Job::Diagnostic(Diagnostic::Sleep { ms: 60_000 }), |e| {
                if requested.is_none() && matches!(e, JobEvent::Progress { .. }) {
                    cancel.cancel();
                    requested = Some(Instant::now());
                }
            })
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Cancelled), "round {round}: {err}");
        let took = requested.unwrap().elapsed();
        println!("round {round}: cancel acknowledged by all ranks in {:.3} s", took.as_secs_f64());
        assert!(took < Duration::from_secs(5));
        // Same processes, data plane in sync: a collective and a ping work right away.
        let result = sup.run_job(Job::Ping, |_| {}).unwrap();
        assert_eq!(result.outputs.len(), 3);
        check_collective(
            &mut sup,
            &CheckSpec {
                op: CollectiveOp::AllReduce(ReduceOp::Sum),
                dtype: WireDType::F32,
                shape: vec![33],
                group: None,
                seed: round,
            },
        );
        assert_eq!(pids(&sup), pids_before);
    }
    // Cancel mid-collective traffic too (the bench checks for cancellation between sizes).
    let mut requested = false;
    let err = sup
        .run_job(endless_bench(), |e| {
            if !requested && matches!(e, JobEvent::Progress { .. }) {
                cancel.cancel();
                requested = true;
            }
        })
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Cancelled), "{err}");
    sup.run_job(Job::Ping, |_| {}).unwrap();
}

#[test]
fn handshake_timeout_names_the_missing_rank() {
    init_logging();
    let spec = tessera_engine::runtime::WorldSpec {
        handshake_timeout: Duration::from_millis(1500),
        debug_connect_delay: Some((Rank(2), Duration::from_secs(60))),
        ..spec(3)
    };
    let start = Instant::now();
    let err = Supervisor::spawn(spec).unwrap_err();
    let took = start.elapsed();
    println!("{err} (after {:.2} s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let RuntimeError::Handshake { detail, worker_pids, .. } = &err else { panic!("expected Handshake, got {err}") };
    assert!(detail.starts_with("rank 2 (pid "), "{detail}");
    assert!(detail.contains("still running) did not connect within 1.5 s"), "{detail}");
    assert_eq!(worker_pids.len(), 3);
    assert_no_orphans(worker_pids, Duration::from_secs(5));
}

#[test]
fn missing_worker_executable_is_a_clear_error() {
    let spec = tessera_engine::runtime::WorldSpec { worker_exe: Some("/nonexistent/tessera-worker".into()), ..spec(2) };
    let err = Supervisor::spawn(spec).unwrap_err().to_string();
    assert!(err.starts_with("worker executable not found"), "{err}");
    assert!(err.contains("/nonexistent/tessera-worker"), "{err}");
}

/// The supervisor's process is SIGKILLed (no destructor runs): the workers must die with it
/// (PR_SET_PDEATHSIG). The test re-runs itself as that supervisor process ("host" mode).
#[test]
fn workers_die_when_the_supervisor_process_is_killed() {
    const HOST_ENV: &str = "TESSERA_TEST_PARENT_DEATH_HOST";
    if std::env::var_os(HOST_ENV).is_some() {
        let sup = Supervisor::spawn(spec(2)).unwrap();
        let list: Vec<String> = pids(&sup).iter().map(u32::to_string).collect();
        println!("WORKER_PIDS {}", list.join(","));
        std::thread::sleep(Duration::from_secs(60));
        drop(sup);
        return;
    }
    let mut host = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "workers_die_when_the_supervisor_process_is_killed", "--nocapture", "--test-threads=1"])
        .env(HOST_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("WORKER_PIDS "))
        .expect("the host printed its worker pids");
    let pids: Vec<u32> = line.rsplit(' ').next().unwrap().split(',').map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| multiprocess_util::alive(p)));
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    assert_no_orphans(&pids, Duration::from_secs(5));
}
