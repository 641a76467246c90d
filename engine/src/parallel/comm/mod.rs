//! The data plane: one small [`Collective`] trait and its backends.
//!
//! Model code holds an `Arc<dyn Collective>` and never knows which backend is underneath:
//! - [`SingleRank`]: world of one, every op is the identity (the no-op fast path).
//! - LocalSocket ([`SocketListener::connect_mesh`] → [`MeshComm`]): CPU worker processes, a full mesh of
//!   Unix-socket streams (one per pair of ranks).
//! - [`ThreadComm`]: ranks as threads of one process over bounded channels, for fast equivalence tests.
//! - `NcclComm` (feature `cuda`): NCCL through cudarc, one process per GPU.
//! - [`check`]: deterministic inputs and single-process reference results for every op (tests, bench).
//!
//! The socket and thread backends share the algorithms of [`MeshComm`]; only the byte transport differs.

pub mod check;
mod mesh;
#[cfg(feature = "cuda")]
pub mod nccl;
mod single;
mod socket;
mod thread;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::Rank;

pub use mesh::MeshComm;
pub use single::SingleRank;
pub use socket::{SocketListener, SocketOptions};
pub use thread::ThreadComm;

/// Element-wise reduction for [`Collective::all_reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Collective ops over the ranks of one world (or sub-group).
///
/// Contract, as for NCCL/MPI: every member calls the same ops, in the same order, with tensors of the
/// same shape and dtype (`send`/`recv` pair up in program order per pair of ranks). One op at a time
/// per group. Results land on the input tensor's device (`recv`: on the backend's device). Every rank
/// gets bit-identical results: reductions add in rank order.
pub trait Collective: std::fmt::Debug + Send + Sync {
    /// This process's rank in this group.
    fn rank(&self) -> Rank;
    fn world_size(&self) -> usize;
    /// Sends `xs` to `dst`. May return before `dst` received it (bounded queue).
    fn send(&self, xs: &Tensor, dst: Rank) -> Result<()>;
    /// Receives the next tensor `src` sent to this rank; `shape`/`dtype` must match what was sent.
    fn recv(&self, src: Rank, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// Concatenates every rank's `xs` along `dim`, in rank order.
    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor>;
    /// Returns `root`'s `xs` on every rank (other ranks' `xs` only give shape and dtype).
    fn broadcast(&self, xs: &Tensor, root: Rank) -> Result<Tensor>;
    /// Ulysses exchange: splits `xs` into `world_size` equal chunks along `split_dim`, sends chunk `j`
    /// to rank `j`, and concatenates the received chunks along `concat_dim` in rank order.
    fn all_to_all(&self, xs: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor>;
    /// Element-wise reduction across ranks; every rank receives the result.
    fn all_reduce(&self, xs: &Tensor, op: ReduceOp) -> Result<Tensor>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&self) -> Result<()>;
    /// A communicator over a subset of this group (`ranks` are ranks *of this group*, and become
    /// ranks `0..ranks.len()` of the new one, in the order given). Only members call it; the caller
    /// must be one. No collective setup happens, so groups can be made freely.
    fn sub_group(&self, ranks: &[Rank]) -> Result<Arc<dyn Collective>>;

    fn all_reduce_sum(&self, xs: &Tensor) -> Result<Tensor> {
        self.all_reduce(xs, ReduceOp::Sum)
    }

    fn all_reduce_max(&self, xs: &Tensor) -> Result<Tensor> {
        self.all_reduce(xs, ReduceOp::Max)
    }
}

/// Data-plane failures. Each names the peer rank involved (global rank in the world) so a dead or
/// stuck process can be found.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("rank {peer} closed its connection (did the process exit?)")]
    PeerClosed { peer: usize },
    #[error("timed out after {:.1} s waiting for rank {peer} ({what})", .after.as_secs_f64())]
    Timeout { peer: usize, what: &'static str, after: Duration },
    #[error("I/O error talking to rank {peer}: {source}")]
    Io { peer: usize, source: std::io::Error },
    #[error(
        "collective mismatch with rank {peer}: expected {expected}, received {received} \
         (all ranks must call the same collectives in the same order)"
    )]
    Mismatch { peer: usize, expected: String, received: String },
    #[error("malformed frame from rank {peer}: {detail}")]
    Protocol { peer: usize, detail: String },
    #[error("data-plane setup failed: {0}")]
    Setup(String),
    #[error("rank {missing:?} did not connect to rank {rank} within {:.1} s", .after.as_secs_f64())]
    SetupTimeout { rank: usize, missing: Vec<usize>, after: Duration },
}

impl From<CommError> for candle_core::Error {
    fn from(err: CommError) -> Self {
        candle_core::Error::wrap(err)
    }
}

/// Validates a sub-group member list against a parent group of `world_size`, returning the caller's
/// index in it.
pub(crate) fn check_sub_group(ranks: &[Rank], world_size: usize, me: Rank) -> Result<usize> {
    if ranks.is_empty() {
        candle_core::bail!("sub_group: empty rank list");
    }
    for (i, r) in ranks.iter().enumerate() {
        if r.0 >= world_size {
            candle_core::bail!("sub_group: rank {r} out of range for a group of {world_size}");
        }
        if ranks[..i].contains(r) {
            candle_core::bail!("sub_group: rank {r} listed twice in {ranks:?}");
        }
    }
    match ranks.iter().position(|r| *r == me) {
        Some(i) => Ok(i),
        None => candle_core::bail!("sub_group: caller rank {me} is not a member of {ranks:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_group_validation() {
        assert_eq!(check_sub_group(&[Rank(2), Rank(0)], 4, Rank(0)).unwrap(), 1);
        assert!(check_sub_group(&[Rank(1)], 4, Rank(0)).unwrap_err().to_string().contains("not a member"));
        assert!(check_sub_group(&[Rank(0), Rank(4)], 4, Rank(0)).unwrap_err().to_string().contains("out of range"));
        assert!(check_sub_group(&[Rank(0), Rank(0)], 4, Rank(0)).unwrap_err().to_string().contains("twice"));
        assert!(check_sub_group(&[], 4, Rank(0)).is_err());
    }
}
