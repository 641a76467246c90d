//! `tessera doctor --selftest`: every collective on real worker processes, with each data-plane
//! backend the device supports (CUDA: NCCL and sockets; CPU: sockets), checked bit for bit against
//! the single-process reference ([`check::reference`]) and against the other backend, then timed
//! (bandwidth per op), with the transport NCCL chose (P2P / SHM / NET, read from its debug log).
//!
//! The first thing to run on a new multi-GPU box: a hang is bounded by the world's comm timeout
//! (sockets: I/O timeout; NCCL: the watchdog aborts the communicators), and the report names the
//! NCCL environment variables to try.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::protocol::{BenchRow, BenchSpec, DeviceKind, Job, JobOutput};
use super::{CommBackend, RuntimeError, Supervisor, WorldSpec};
use crate::parallel::comm::check::{self, CheckSpec, CollectiveOp};
use crate::parallel::comm::wire::{tensor_from_bytes, WireDType};
use crate::parallel::comm::ReduceOp;

/// NCCL environment variables to try when the self-test hangs or is slow, with why.
pub const NCCL_HINTS: &[(&str, &str)] = &[
    ("NCCL_DEBUG=INFO", "log the transports and rings NCCL builds (and where it stops)"),
    ("NCCL_P2P_DISABLE=1", "consumer GPUs (RTX 4090) whose driver claims peer access that does not work"),
    ("NCCL_SHM_DISABLE=1", "containers with a small /dev/shm"),
    ("NCCL_IB_DISABLE=1", "single machine: skip InfiniBand probing"),
    ("NCCL_SOCKET_IFNAME=lo", "single machine: bootstrap over loopback when other interfaces are firewalled"),
    ("NCCL_CUMEM_ENABLE=0", "older drivers where cuMem-based buffers fail"),
];

/// What to test.
#[derive(Clone, Debug)]
pub struct SelftestSpec {
    pub ranks: usize,
    pub device: DeviceKind,
    /// Backends in order; empty: NCCL then sockets on CUDA, sockets on CPU.
    pub backends: Vec<CommBackend>,
    /// Rank→GPU map (see [`super::device_ordinals`]); a map that shares a GPU skips NCCL.
    pub gpus: Vec<usize>,
    pub worker_exe: Option<PathBuf>,
    /// Payload per rank for the bandwidth runs.
    pub bench_bytes: u64,
    /// How long one collective may wait before the world is declared stuck.
    pub comm_timeout: Duration,
    pub env: Vec<(String, String)>,
}

impl Default for SelftestSpec {
    fn default() -> Self {
        Self {
            ranks: 2,
            device: DeviceKind::Cpu,
            backends: Vec::new(),
            gpus: Vec::new(),
            worker_exe: None,
            bench_bytes: 16 << 20,
            comm_timeout: Duration::from_secs(60),
            env: Vec::new(),
        }
    }
}

/// One correctness check: an op, dtype and group on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct CheckRow {
    pub op: String,
    pub dtype: String,
    /// World ranks of the group (`None`: the world).
    pub group: Option<Vec<usize>>,
    /// Every rank's output equals the reference bit for bit.
    pub bitwise: bool,
    /// Largest |output − reference| over the ranks (0 when bitwise).
    pub max_abs: f64,
}

/// One backend's results.
#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    pub backend: String,
    /// The world could not start or a job failed (the rest of the report is partial).
    pub error: Option<String>,
    pub checks: Vec<CheckRow>,
    pub bench: Vec<BenchRow>,
    /// NCCL only: transports its debug log shows (e.g. "P2P", "SHM", "NET").
    pub transports: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SelftestReport {
    pub ranks: usize,
    pub device: String,
    pub backends: Vec<BackendReport>,
    /// With two backends: per check, whether both produced identical bytes on every rank.
    pub cross_backend_identical: Option<bool>,
}

impl SelftestReport {
    /// Every check bitwise equal to the reference, no backend failed, backends identical.
    pub fn passed(&self) -> bool {
        self.backends.iter().all(|b| b.error.is_none() && !b.checks.is_empty() && b.checks.iter().all(|c| c.bitwise))
            && self.cross_backend_identical != Some(false)
    }

    pub fn render(&self) -> String {
        let mut s = format!("Collective self-test: {} {} rank(s)\n", self.ranks, self.device);
        for b in &self.backends {
            let ok = b.checks.iter().filter(|c| c.bitwise).count();
            s += &format!("\n[{}] {ok}/{} checks bit-identical to the reference\n", b.backend, b.checks.len());
            for c in b.checks.iter().filter(|c| !c.bitwise) {
                s += &format!("  MISMATCH {} {} group {:?}: max |diff| {:e}\n", c.op, c.dtype, c.group, c.max_abs);
            }
            if let Some(e) = &b.error {
                s += &format!("  FAILED: {e}\n");
            }
            if !b.transports.is_empty() {
                s += &format!("  NCCL transport: {}\n", b.transports.join(", "));
            }
            for r in &b.bench {
                s += &format!(
                    "  {:<22} {:>8.1} MiB/rank  {:>10.1} us  algbw {:>8.3} GB/s  busbw {:>8.3} GB/s\n",
                    r.op,
                    r.bytes as f64 / (1u64 << 20) as f64,
                    r.mean_secs * 1e6,
                    r.algbw_gbps,
                    r.busbw_gbps
                );
            }
        }
        match self.cross_backend_identical {
            Some(true) => s += "\nBackends agree bit for bit on every check.\n",
            Some(false) => s += "\nBACKENDS DISAGREE on some check (see above).\n",
            None => {}
        }
        s += &format!("\nResult: {}\n", if self.passed() { "PASS" } else { "FAIL" });
        s += "\nIf it hangs or is slow, try (one at a time):\n";
        for (var, why) in NCCL_HINTS {
            s += &format!("  {var:<24} {why}\n");
        }
        s
    }
}

/// The checks every backend runs: each op in f32 and bf16 on the world, and the ops in a split
/// group (the way plan groups are made) in a non-sorted member order.
fn checks(n: usize) -> Vec<CheckSpec> {
    let ops = [
        CollectiveOp::SendRecv,
        CollectiveOp::AllGather { dim: 1 },
        CollectiveOp::AllGatherInto,
        CollectiveOp::Broadcast { root: n - 1 },
        CollectiveOp::AllToAll { split_dim: 1, concat_dim: 0 },
        CollectiveOp::AllReduce(ReduceOp::Sum),
        CollectiveOp::AllReduce(ReduceOp::Max),
        CollectiveOp::Barrier,
    ];
    let mut specs = Vec::new();
    // dim 1 of 12·n elements splits evenly for all_to_all in the world and in any group.
    for op in ops {
        for dtype in [WireDType::F32, WireDType::BF16] {
            specs.push(CheckSpec { op, dtype, shape: vec![3, 12 * n, 5], group: None, seed: 11 });
        }
    }
    if n >= 2 {
        let group: Vec<usize> = (0..n).rev().collect();
        for op in ops {
            let op = match op {
                CollectiveOp::Broadcast { .. } => CollectiveOp::Broadcast { root: 0 },
                other => other,
            };
            specs.push(CheckSpec {
                op,
                dtype: WireDType::F32,
                shape: vec![2, 12 * n, 3],
                group: Some(group.clone()),
                seed: 12,
            });
        }
    }
    specs
}

/// Runs the self-test; a backend that fails is reported, not returned as an error.
pub fn run(spec: &SelftestSpec) -> SelftestReport {
    let backends = if spec.backends.is_empty() {
        match spec.device {
            DeviceKind::Cuda => vec![CommBackend::Nccl, CommBackend::Socket],
            DeviceKind::Cpu => vec![CommBackend::Socket],
        }
    } else {
        spec.backends.clone()
    };
    let mut reports = Vec::new();
    let mut outputs: Vec<BTreeMap<usize, Vec<Vec<u8>>>> = Vec::new();
    for backend in backends {
        let (report, outs) = run_backend(spec, backend);
        reports.push(report);
        outputs.push(outs);
    }
    let cross_backend_identical = (outputs.len() >= 2).then(|| {
        let first = &outputs[0];
        outputs[1..].iter().all(|o| o.iter().all(|(k, v)| first.get(k).is_none_or(|f| f == v)))
    });
    SelftestReport { ranks: spec.ranks, device: spec.device.to_string(), backends: reports, cross_backend_identical }
}

/// One backend: checks (outputs kept per check index, per rank, as bytes), then the bandwidth runs.
fn run_backend(spec: &SelftestSpec, backend: CommBackend) -> (BackendReport, BTreeMap<usize, Vec<Vec<u8>>>) {
    let mut report = BackendReport {
        backend: match backend {
            CommBackend::Auto => "auto",
            CommBackend::Socket => "socket",
            CommBackend::Nccl => "nccl",
        }
        .into(),
        error: None,
        checks: Vec::new(),
        bench: Vec::new(),
        transports: Vec::new(),
    };
    let mut outputs = BTreeMap::new();
    let log_dir =
        std::env::temp_dir().join(format!("tessera-selftest-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let mut env = spec.env.clone();
    if backend == CommBackend::Nccl {
        let _ = std::fs::create_dir_all(&log_dir);
        env.push(("NCCL_DEBUG".into(), "INFO".into()));
        env.push(("NCCL_DEBUG_SUBSYS".into(), "INIT,P2P,SHM,NET".into()));
        env.push(("NCCL_DEBUG_FILE".into(), log_dir.join("nccl.%p.log").display().to_string()));
    }
    let world = WorldSpec {
        ranks: spec.ranks,
        device: spec.device,
        comm: backend,
        worker_exe: spec.worker_exe.clone(),
        comm_timeout: spec.comm_timeout,
        gpus: spec.gpus.clone(),
        env,
        ..WorldSpec::default()
    };
    let result = (|| -> Result<(), RuntimeError> {
        let mut sup = Supervisor::spawn(world)?;
        for (i, check) in checks(spec.ranks).iter().enumerate() {
            let (row, outs) = run_check(&mut sup, check)?;
            report.checks.push(row);
            outputs.insert(i, outs);
        }
        let bench = BenchSpec {
            ops: vec![
                CollectiveOp::SendRecv,
                CollectiveOp::AllReduce(ReduceOp::Sum),
                CollectiveOp::AllGather { dim: 0 },
                CollectiveOp::Broadcast { root: 0 },
                CollectiveOp::AllToAll { split_dim: 0, concat_dim: 0 },
            ],
            sizes_bytes: vec![spec.bench_bytes],
            dtype: WireDType::BF16,
            iters: 5,
            warmup: 1,
        };
        if let JobOutput::Bench(rows) = &sup.run_job(Job::CommBench(bench), |_| {})?.outputs[0] {
            report.bench = rows.clone();
        }
        sup.shutdown();
        Ok(())
    })();
    if let Err(e) = result {
        report.error = Some(e.to_string());
    }
    if backend == CommBackend::Nccl {
        report.transports = transports_in_logs(&log_dir);
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    (report, outputs)
}

fn run_check(sup: &mut Supervisor, spec: &CheckSpec) -> Result<(CheckRow, Vec<Vec<u8>>), RuntimeError> {
    let members = spec.group.clone().unwrap_or_else(|| (0..sup.world_size()).collect());
    let expected =
        check::reference(spec, members.len()).map_err(|e| RuntimeError::WorldDown { reason: e.to_string() })?;
    let result = sup.run_job(Job::CommCheck(spec.clone()), |_| {})?;
    let (mut bitwise, mut max_abs, mut bytes) = (true, 0.0f64, Vec::new());
    for (world_rank, out) in result.outputs.iter().enumerate() {
        let Some(group_rank) = members.iter().position(|&m| m == world_rank) else { continue };
        let JobOutput::Tensor(Some(w)) = out else {
            bitwise = false;
            max_abs = f64::NAN;
            continue;
        };
        let exp = &expected[group_rank];
        let got = tensor_from_bytes(&w.bytes, w.dtype, &w.shape, &candle_core::Device::Cpu)
            .and_then(|t| check::max_abs_diff(&t, exp));
        match got {
            Ok(d) => {
                max_abs = max_abs.max(d);
                bitwise &= d == 0.0 && crate::parallel::comm::wire::tensor_to_bytes(exp).is_ok_and(|b| b == w.bytes);
            }
            Err(_) => {
                bitwise = false;
                max_abs = f64::NAN;
            }
        }
        bytes.push(w.bytes.clone());
    }
    let row = CheckRow {
        op: spec.op.label(),
        dtype: format!("{:?}", spec.dtype).to_lowercase(),
        group: spec.group.clone(),
        bitwise,
        max_abs,
    };
    Ok((row, bytes))
}

/// The transports in NCCL's INFO lines ("… via P2P/CUMEM/read", "via SHM/direct/direct",
/// "via NET/Socket/0"), first component, sorted and unique.
pub fn parse_transports(log: &str) -> Vec<String> {
    let mut found: Vec<String> = log
        .lines()
        .filter_map(|l| l.split(" via ").nth(1))
        .filter_map(|rest| rest.split(['/', ' ']).next())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

fn transports_in_logs(dir: &Path) -> Vec<String> {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                all += &text;
            }
        }
    }
    parse_transports(&all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_come_from_nccl_info_lines() {
        let log = "host:1:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n\
                   host:1:2 [0] NCCL INFO Channel 01/0 : 1[1] -> 0[0] via SHM/direct/direct\n\
                   host:1:2 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] [send] via NET/Socket/0\n\
                   host:1:2 [0] NCCL INFO Connected all rings\n";
        assert_eq!(parse_transports(log), vec!["NET", "P2P", "SHM"]);
        assert!(parse_transports("NCCL INFO Bootstrap\n").is_empty());
    }

    #[test]
    fn check_list_covers_every_op_and_a_split_group() {
        let specs = checks(3);
        assert_eq!(specs.iter().filter(|s| s.group.is_none()).count(), 16);
        assert!(specs.iter().any(|s| s.group == Some(vec![2, 1, 0])));
        for s in &specs {
            assert_eq!(s.shape[1] % 3, 0);
        }
    }
}
