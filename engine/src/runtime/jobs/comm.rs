//! Jobs that exercise the data plane: `CommCheck` (one op on deterministic inputs, outputs returned
//! for comparison with the single-process reference) and `CommBench` (timings per op and size).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{JobCtx, JobError};
use crate::parallel::comm::check::{run_check, run_op, CheckSpec, CollectiveOp};
use crate::parallel::comm::wire::tensor_to_bytes;
use crate::parallel::comm::ReduceOp;
use crate::runtime::protocol::{BenchRow, BenchSpec, JobOutput, WireTensor};

pub fn check(ctx: &JobCtx, spec: &CheckSpec) -> Result<JobOutput, JobError> {
    let _phase = ctx.phase(&spec.op.label());
    let out = run_check(ctx.comm().as_ref(), spec)?;
    let wire = match out {
        None => None,
        Some(t) => Some(WireTensor { dtype: spec.dtype, shape: t.dims().to_vec(), bytes: tensor_to_bytes(&t)? }),
    };
    Ok(JobOutput::Tensor(wire))
}

/// Bus-bandwidth factor, as in nccl-tests, for a per-rank payload: how many payloads cross each
/// rank's link per op relative to one.
fn bus_factor(op: CollectiveOp, n: usize) -> f64 {
    let n = n as f64;
    match op {
        CollectiveOp::AllReduce(_) => 2.0 * (n - 1.0) / n,
        CollectiveOp::AllGather { .. } | CollectiveOp::AllGatherInto => n - 1.0,
        CollectiveOp::AllToAll { .. } => (n - 1.0) / n,
        CollectiveOp::Broadcast { .. } | CollectiveOp::SendRecv => 1.0,
        CollectiveOp::Barrier => 0.0,
    }
}

pub fn bench(ctx: &JobCtx, spec: &BenchSpec) -> Result<JobOutput, JobError> {
    let comm = ctx.comm().as_ref();
    let n = comm.world_size();
    let esz = spec.dtype.size_in_bytes();
    let total: u64 =
        spec.ops.iter().map(|op| if *op == CollectiveOp::Barrier { 1 } else { spec.sizes_bytes.len() as u64 }).sum();
    let mut rows = Vec::new();
    let mut step = 0;
    for &op in &spec.ops {
        // 1-D payloads; the bench measures bytes moved, not layouts.
        let op = match op {
            CollectiveOp::AllGather { .. } => CollectiveOp::AllGather { dim: 0 },
            CollectiveOp::AllToAll { .. } => CollectiveOp::AllToAll { split_dim: 0, concat_dim: 0 },
            CollectiveOp::Broadcast { root } if root >= n => {
                return Err(JobError::Invalid(format!("broadcast root {root} out of range for {n} ranks")))
            }
            other => other,
        };
        let _phase = ctx.phase(&op.label());
        let sizes: &[u64] = if op == CollectiveOp::Barrier {
            &spec.sizes_bytes[..1.min(spec.sizes_bytes.len())]
        } else {
            &spec.sizes_bytes
        };
        for &bytes in sizes {
            ctx.check_cancelled()?;
            // Whole elements, and a multiple of the world size for all_to_all.
            let numel = ((bytes as usize / esz).max(1)).div_ceil(n) * n;
            let xs = Tensor::zeros(numel, spec.dtype.dtype(), ctx.device())?;
            for _ in 0..spec.warmup {
                run_op(comm, op, &xs)?;
            }
            comm.barrier()?;
            let mut times = Vec::with_capacity(spec.iters as usize);
            for _ in 0..spec.iters.max(1) {
                let t = Instant::now();
                run_op(comm, op, &xs)?;
                times.push(t.elapsed().as_secs_f64());
            }
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            // The slowest rank's view is the op's time.
            let local = Tensor::new(&[mean, min], &Device::Cpu)?;
            let worst = comm.all_reduce(&local, ReduceOp::Max)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let payload = if op == CollectiveOp::Barrier { 0 } else { (numel * esz) as u64 };
            let algbw = payload as f64 / worst[0] / 1e9;
            rows.push(BenchRow {
                op: op.label(),
                bytes: payload,
                iters: spec.iters.max(1),
                mean_secs: worst[0],
                min_secs: worst[1],
                algbw_gbps: algbw,
                busbw_gbps: algbw * bus_factor(op, n),
            });
            step += 1;
            ctx.progress(step, total, format!("{} {} B", op.label(), payload));
        }
    }
    Ok(if ctx.rank().0 == 0 { JobOutput::Bench(rows) } else { JobOutput::None })
}
