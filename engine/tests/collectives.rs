//! Every collective across real `tessera-worker` processes (LocalSocket backend), world sizes 2–4,
//! several dtypes and sizes, and sub-groups. Each rank's output must equal, bit for bit, the result
//! computed in this process from all ranks' inputs (`check::reference`): the inputs are multiples of
//! 0.5 below 64, so even bf16 sums are exact and any difference is a real bug.

mod multiprocess_util;

use std::time::Instant;

use multiprocess_util::{check_collective, init_logging, spec};
use tessera_engine::parallel::comm::check::{CheckSpec, CollectiveOp};
use tessera_engine::parallel::comm::wire::WireDType;
use tessera_engine::parallel::comm::ReduceOp;
use tessera_engine::runtime::Supervisor;

fn ops(world: usize) -> Vec<CollectiveOp> {
    vec![
        CollectiveOp::SendRecv,
        CollectiveOp::AllGather { dim: 0 },
        CollectiveOp::AllGather { dim: 2 },
        CollectiveOp::AllGatherInto,
        CollectiveOp::Broadcast { root: world - 1 },
        CollectiveOp::AllToAll { split_dim: 1, concat_dim: 0 },
        CollectiveOp::AllToAll { split_dim: 1, concat_dim: 2 },
        CollectiveOp::AllReduce(ReduceOp::Sum),
        CollectiveOp::AllReduce(ReduceOp::Max),
        CollectiveOp::Barrier,
    ]
}

/// Small tensors in every dtype, medium ones in f32/bf16, one large f32 payload per op.
fn run_world(world: usize) {
    init_logging();
    let start = Instant::now();
    let mut sup = Supervisor::spawn(spec(world)).unwrap();
    let mut checks = 0;
    for op in ops(world) {
        // dim 1 has 12 elements: divisible by 2, 3 and 4 for all_to_all.
        for dtype in WireDType::ALL {
            check_collective(&mut sup, &CheckSpec { op, dtype, shape: vec![2, 12, 3], group: None, seed: 1 });
            checks += 1;
        }
        for dtype in [WireDType::F32, WireDType::BF16] {
            check_collective(&mut sup, &CheckSpec { op, dtype, shape: vec![4, 12, 64], group: None, seed: 2 });
            checks += 1;
        }
        // 4 × 12 × 8192 f32 = 1.5 MiB per rank: many socket buffers' worth.
        let large = CheckSpec { op, dtype: WireDType::F32, shape: vec![4, 12, 8192], group: None, seed: 3 };
        check_collective(&mut sup, &large);
        checks += 1;
    }
    sup.shutdown();
    println!(
        "world {world}: {checks} collective checks bit-identical to the reference in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn every_collective_world_of_2() {
    run_world(2);
}

#[test]
fn every_collective_world_of_3() {
    run_world(3);
}

#[test]
fn every_collective_world_of_4() {
    run_world(4);
}

#[test]
fn sub_groups_of_a_world_of_4() {
    init_logging();
    let mut sup = Supervisor::spawn(spec(4)).unwrap();
    // A CFG-like pair, a Ulysses-like triple in a non-sorted order, and a group of one.
    for group in [vec![1, 3], vec![2, 0, 3], vec![2]] {
        let n = group.len();
        for op in [
            CollectiveOp::SendRecv,
            CollectiveOp::AllGather { dim: 1 },
            CollectiveOp::Broadcast { root: n - 1 },
            CollectiveOp::AllToAll { split_dim: 1, concat_dim: 0 },
            CollectiveOp::AllReduce(ReduceOp::Sum),
            CollectiveOp::AllReduce(ReduceOp::Max),
            CollectiveOp::Barrier,
        ] {
            for dtype in [WireDType::F32, WireDType::F16, WireDType::I64] {
                let spec = CheckSpec { op, dtype, shape: vec![3, 6, 5], group: Some(group.clone()), seed: 5 };
                check_collective(&mut sup, &spec);
            }
        }
    }
    // The world is still in sync after the sub-group traffic.
    check_collective(
        &mut sup,
        &CheckSpec {
            op: CollectiveOp::AllReduce(ReduceOp::Sum),
            dtype: WireDType::F32,
            shape: vec![7],
            group: None,
            seed: 6,
        },
    );
    sup.shutdown();
}

/// `tessera doctor --selftest` on CPU workers: every op (world and a split group) bit-identical to
/// the reference through the socket backend, and a bandwidth row per timed op.
#[test]
fn doctor_selftest_passes_on_a_socket_world_of_3() {
    use tessera_engine::runtime::selftest::{run, SelftestSpec};
    init_logging();
    let report = run(&SelftestSpec {
        ranks: 3,
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        bench_bytes: 1 << 16,
        ..SelftestSpec::default()
    });
    println!("{}", report.render());
    assert!(report.passed());
    let socket = &report.backends[0];
    assert_eq!((socket.backend.as_str(), socket.checks.len(), socket.bench.len()), ("socket", 24, 5));
    assert!(socket.checks.iter().any(|c| c.group == Some(vec![2, 1, 0]) && c.bitwise));
    assert!(socket.bench.iter().all(|r| r.algbw_gbps > 0.0));
}

/// A backend that cannot start is reported (named, with the reason) and fails the self-test.
#[test]
fn doctor_selftest_reports_a_backend_that_cannot_start() {
    use tessera_engine::runtime::selftest::{run, SelftestSpec};
    use tessera_engine::runtime::CommBackend;
    let report = run(&SelftestSpec {
        ranks: 2,
        backends: vec![CommBackend::Nccl],
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        ..SelftestSpec::default()
    });
    assert!(!report.passed());
    // A CPU worker refuses `--comm nccl` at startup; the failing rank is named.
    let err = report.backends[0].error.clone().unwrap_or_default();
    assert_eq!(report.backends[0].backend, "nccl");
    assert!(err.contains("rank") && err.contains("exit"), "{err}");
    assert!(report.render().contains("NCCL_P2P_DISABLE=1"));
}
