//! Checking collectives: deterministic per-rank inputs, the op as a backend runs it, and the result
//! computed in one process from all ranks' inputs with plain tensor ops.
//!
//! Worker processes run [`run_check`] (job `CommCheck`) and send their outputs back; tests compare
//! them with [`reference`]. Inputs are multiples of 0.5 below 64 in magnitude, so sums of up to 8
//! ranks are exact in every float dtype (bf16 included) and results can be compared bit for bit.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::wire::WireDType;
use super::{color_of, Collective, ReduceOp, SingleRank};
use crate::parallel::Rank;

/// One collective to check (or benchmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollectiveOp {
    /// Ring: rank `r` sends to `r + 1` and receives from `r - 1` (one `send_recv`).
    SendRecv,
    AllGather {
        dim: usize,
    },
    /// `all_gather` along dim 0 into a tensor the caller allocated (the FSDP prefetch's form).
    AllGatherInto,
    Broadcast {
        root: usize,
    },
    AllToAll {
        split_dim: usize,
        concat_dim: usize,
    },
    AllReduce(ReduceOp),
    Barrier,
}

impl CollectiveOp {
    pub fn label(&self) -> String {
        match self {
            Self::SendRecv => "send_recv".into(),
            Self::AllGather { dim } => format!("all_gather(dim {dim})"),
            Self::AllGatherInto => "all_gather_into".into(),
            Self::Broadcast { root } => format!("broadcast(root {root})"),
            Self::AllToAll { split_dim, concat_dim } => format!("all_to_all({split_dim}->{concat_dim})"),
            Self::AllReduce(ReduceOp::Sum) => "all_reduce_sum".into(),
            Self::AllReduce(ReduceOp::Max) => "all_reduce_max".into(),
            Self::Barrier => "barrier".into(),
        }
    }
}

/// What to run: an op on tensors of `shape`/`dtype`, in the whole world or in a sub-group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub op: CollectiveOp,
    pub dtype: WireDType,
    pub shape: Vec<usize>,
    /// World ranks of the sub-group to run in (`None`: the whole world).
    pub group: Option<Vec<usize>>,
    pub seed: u64,
}

/// The input of group rank `rank` (deterministic in `spec.seed`).
pub fn check_input(spec: &CheckSpec, rank: usize) -> Result<Tensor> {
    let numel: usize = spec.shape.iter().product();
    let unsigned = matches!(spec.dtype, WireDType::U8 | WireDType::U32);
    let values: Vec<f64> = (0..numel)
        .map(|i| {
            let k = (i as u64).wrapping_mul(7).wrapping_add(rank as u64 * 13).wrapping_add(spec.seed) % 61;
            // u8: at most 60 per rank, so sums of 4 ranks stay below 255.
            if unsigned {
                k as f64
            } else {
                (k as f64 - 30.0) * 0.5
            }
        })
        .collect();
    Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu)?.to_dtype(spec.dtype.dtype())
}

/// Runs `spec` on this rank; `None` when this rank is not in `spec.group`. A group is made the way
/// a generation makes its groups: a [`Collective::split`] every rank of `world` takes part in (ranks
/// running different specs at the same time must list disjoint groups, as a plan's groups are).
pub fn run_check(world: &dyn Collective, spec: &CheckSpec) -> Result<Option<Tensor>> {
    let sub: Arc<dyn Collective>;
    let comm: &dyn Collective = match &spec.group {
        None => world,
        Some(group) => {
            let (color, key) = color_of(&group.iter().copied().map(Rank).collect::<Vec<_>>(), world.rank());
            match (world.split(color, key)?, group.as_slice()) {
                (Some(made), _) => {
                    sub = made;
                    sub.as_ref()
                }
                // A group of one: the op runs on this rank alone.
                (None, [only]) if *only == world.rank().0 => {
                    sub = Arc::new(SingleRank);
                    sub.as_ref()
                }
                (None, _) => return Ok(None),
            }
        }
    };
    let xs = check_input(spec, comm.rank().0)?;
    run_op(comm, spec.op, &xs).map(Some)
}

/// The op itself, on an input tensor.
pub fn run_op(comm: &dyn Collective, op: CollectiveOp, xs: &Tensor) -> Result<Tensor> {
    let (rank, n) = (comm.rank().0, comm.world_size());
    match op {
        CollectiveOp::SendRecv => {
            if n == 1 {
                return Ok(xs.clone());
            }
            let sends = [(Rank((rank + 1) % n), xs.clone())];
            let recvs = [(Rank((rank + n - 1) % n), xs.dims().to_vec(), xs.dtype())];
            comm.send_recv(&sends, &recvs)?.pop().ok_or_else(|| candle_core::Error::Msg("send_recv: no tensor".into()))
        }
        CollectiveOp::AllGather { dim } => comm.all_gather(xs, dim),
        CollectiveOp::AllGatherInto => {
            let mut shape = xs.dims().to_vec();
            shape[0] *= n;
            let out = Tensor::zeros(shape, xs.dtype(), xs.device())?;
            comm.all_gather_into(xs, &out)?;
            Ok(out)
        }
        CollectiveOp::Broadcast { root } => comm.broadcast(xs, Rank(root)),
        CollectiveOp::AllToAll { split_dim, concat_dim } => comm.all_to_all(xs, split_dim, concat_dim),
        CollectiveOp::AllReduce(reduce) => comm.all_reduce(xs, reduce),
        CollectiveOp::Barrier => {
            comm.barrier()?;
            Ok(xs.clone())
        }
    }
}

/// Every group rank's expected output, computed in one process from all inputs.
pub fn reference(spec: &CheckSpec, group_size: usize) -> Result<Vec<Tensor>> {
    let xs = (0..group_size).map(|r| check_input(spec, r)).collect::<Result<Vec<_>>>()?;
    let n = group_size;
    (0..n)
        .map(|r| match spec.op {
            CollectiveOp::SendRecv => Ok(xs[(r + n - 1) % n].clone()),
            CollectiveOp::AllGather { dim } => Tensor::cat(&xs, dim),
            CollectiveOp::AllGatherInto => Tensor::cat(&xs, 0),
            CollectiveOp::Broadcast { root } => Ok(xs[root].clone()),
            CollectiveOp::AllToAll { split_dim, concat_dim } => {
                let chunk = xs[0].dim(split_dim)? / n;
                let parts = xs.iter().map(|x| x.narrow(split_dim, r * chunk, chunk)).collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, concat_dim)
            }
            CollectiveOp::AllReduce(op) => {
                let mut acc = xs[0].clone();
                for x in &xs[1..] {
                    acc = match op {
                        ReduceOp::Sum => (acc + x)?,
                        ReduceOp::Max => acc.maximum(x)?,
                    };
                }
                Ok(acc)
            }
            CollectiveOp::Barrier => Ok(xs[r].clone()),
        })
        .collect()
}

/// Largest absolute difference (as f64); 0 means bit-identical for these inputs.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        candle_core::bail!("shape/dtype differ: {:?} {:?} vs {:?} {:?}", a.dims(), a.dtype(), b.dims(), b.dtype());
    }
    (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::comm::ThreadComm;

    fn ops() -> Vec<CollectiveOp> {
        vec![
            CollectiveOp::SendRecv,
            CollectiveOp::AllGather { dim: 0 },
            CollectiveOp::AllGather { dim: 1 },
            CollectiveOp::AllGatherInto,
            CollectiveOp::Broadcast { root: 1 },
            CollectiveOp::AllToAll { split_dim: 1, concat_dim: 0 },
            CollectiveOp::AllReduce(ReduceOp::Sum),
            CollectiveOp::AllReduce(ReduceOp::Max),
            CollectiveOp::Barrier,
        ]
    }

    /// The shared algorithms over in-process ranks, for every op and dtype, against the reference.
    #[test]
    fn thread_world_matches_reference_for_every_op_and_dtype() -> Result<()> {
        for n in [2usize, 3] {
            for op in ops() {
                for dtype in WireDType::ALL {
                    let spec = CheckSpec { op, dtype, shape: vec![2, 6, 5], group: None, seed: 3 };
                    let outs = ThreadComm::run(n, |comm| run_check(comm, &spec))?;
                    let expected = reference(&spec, n)?;
                    for (r, (out, exp)) in outs.iter().zip(&expected).enumerate() {
                        let out = out.as_ref().expect("every rank is in the world group");
                        let diff = max_abs_diff(out, exp)?;
                        assert_eq!(diff, 0.0, "world {n} rank {r} {op:?} {dtype:?}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn thread_sub_groups_run_concurrently() -> Result<()> {
        // Two disjoint groups of a world of 4 reduce at the same time; 5 elements don't split evenly.
        let spec_a = CheckSpec {
            op: CollectiveOp::AllReduce(ReduceOp::Sum),
            dtype: WireDType::F32,
            shape: vec![5],
            group: Some(vec![3, 1]),
            seed: 1,
        };
        let spec_b = CheckSpec { group: Some(vec![0, 2]), ..spec_a.clone() };
        let outs = ThreadComm::run(4, |comm| {
            let spec = if [1, 3].contains(&comm.rank().0) { &spec_a } else { &spec_b };
            run_check(comm, spec)
        })?;
        let expected = reference(&spec_a, 2)?;
        for out in outs {
            assert_eq!(max_abs_diff(&out.expect("member"), &expected[0])?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn mismatched_ops_are_reported() {
        let result = ThreadComm::run(2, |comm| {
            let xs = Tensor::zeros(4, DType::F32, &Device::Cpu)?;
            if comm.rank().0 == 0 {
                comm.all_gather(&xs, 0)
            } else {
                comm.all_reduce_sum(&xs)
            }
        });
        let err = result.unwrap_err().to_string();
        assert!(err.contains("collective mismatch with rank"), "{err}");
    }
}
