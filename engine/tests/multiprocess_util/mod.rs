//! Shared helpers of the multi-process tests: world specs pointing at the real worker binary, and
//! `/proc` checks that no worker (or anything in its process group) outlives a test.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tessera_engine::api::SessionOptions;
use tessera_engine::parallel::comm::check::{max_abs_diff, reference, CheckSpec};
use tessera_engine::parallel::comm::wire::tensor_from_bytes;
use tessera_engine::runtime::{Job, JobOutput, Supervisor, WorldSpec};

/// Session options for the real worker binary, one CPU thread per rank.
pub fn session_options() -> SessionOptions {
    SessionOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        threads_per_rank: Some(1),
        ..SessionOptions::default()
    }
}

/// (max-abs, ‖a − b‖ / ‖b‖) in f32.
pub fn errors(got: &Tensor, want: &Tensor) -> (f32, f32) {
    let d = (got - want).unwrap();
    let max = d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    (max, norm(&d) / norm(want))
}

pub fn spec(ranks: usize) -> WorldSpec {
    WorldSpec {
        ranks,
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        handshake_timeout: Duration::from_secs(10),
        comm_timeout: Duration::from_secs(20),
        shutdown_grace: Duration::from_secs(1),
        cancel_grace: Duration::from_secs(5),
        threads_per_rank: Some(1),
        ..WorldSpec::default()
    }
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

/// Alive and not a zombie (a zombie holds no resources; its parent just has not reaped it).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.trim().chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// Live processes whose process group is one of `pgids` (workers lead their own groups).
pub fn group_members(pgids: &[u32]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            // fields[0] = state, fields[2] = pgrp
            fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<u32>().is_ok_and(|g| pgids.contains(&g))
        })
        .collect()
}

/// Waits up to `within` for every pid and every member of their groups to be gone.
pub fn assert_no_orphans(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let live: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        let members = group_members(pids);
        if live.is_empty() && members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {within:?}: workers {live:?}, group members {members:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `spec` on the world and compares every member's output with the single-process reference.
/// Returns the largest difference seen (0 = bit-identical).
pub fn check_collective(sup: &mut Supervisor, spec: &CheckSpec) -> f64 {
    let result = sup.run_job(Job::CommCheck(spec.clone()), |_| {}).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    let members: Vec<usize> = spec.group.clone().unwrap_or_else(|| (0..sup.world_size()).collect());
    let expected = reference(spec, members.len()).unwrap();
    let mut worst = 0f64;
    for (rank, output) in result.outputs.iter().enumerate() {
        let JobOutput::Tensor(wire) = output else { panic!("rank {rank}: unexpected output {output:?}") };
        match members.iter().position(|&m| m == rank) {
            None => assert!(wire.is_none(), "rank {rank} is outside the group but returned a tensor"),
            Some(group_rank) => {
                let wire = wire.as_ref().unwrap_or_else(|| panic!("rank {rank} returned nothing for {spec:?}"));
                let got: Tensor = tensor_from_bytes(&wire.bytes, wire.dtype, &wire.shape, &Device::Cpu).unwrap();
                let diff = max_abs_diff(&got, &expected[group_rank]).unwrap();
                assert_eq!(diff, 0.0, "rank {rank} (group rank {group_rank}) differs by {diff} for {spec:?}");
                worst = worst.max(diff);
            }
        }
    }
    worst
}
