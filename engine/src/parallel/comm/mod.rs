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

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::Rank;

pub use mesh::MeshComm;
pub use single::SingleRank;
pub use socket::{SocketListener, SocketOptions};
pub use thread::ThreadComm;

/// Independent transports (lanes) the socket and thread meshes form between every pair of ranks:
/// the second carries what runs beside the compute thread's ops ([`Collective::duplicate`]).
pub const LANES: usize = 2;

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
    /// [`Collective::all_gather`] along dim 0, written into `out` (contiguous, the same dtype and
    /// device, `world_size · xs.dim(0)` rows of `xs`'s row shape) instead of a new tensor: the
    /// caller owns the result's memory from the moment it issues the gather, as a CUDA caching
    /// allocator holds an all-gather's output from the launch. What lets an FSDP prefetch hold the
    /// next unit's bytes whatever the threads' timing. The default gathers, then copies.
    fn all_gather_into(&self, xs: &Tensor, out: &Tensor) -> Result<()> {
        check_gather_into(xs, out, self.world_size())?;
        out.slice_set(&self.all_gather(xs, 0)?, 0, 0)
    }
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
    /// must be one. No collective setup happens, so groups can be made freely. On NCCL this group
    /// travels through host memory: hot groups are made with [`Collective::split`].
    fn sub_group(&self, ranks: &[Rank]) -> Result<Arc<dyn Collective>>;

    /// Splits this group as `ncclCommSplit` does: a collective call of *every* rank of this group;
    /// ranks passing the same `color` form one new group, ordered by `key` (ties: by rank here);
    /// `None` (no color) gets no group. NCCL makes a real device communicator; the other backends
    /// exchange the colors and form a [`Collective::sub_group`], so both agree on every membership
    /// ([`split_members`]).
    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Arc<dyn Collective>>> {
        match split_members(self, color, key)? {
            Some(ranks) => self.sub_group(&ranks).map(Some),
            None => Ok(None),
        }
    }

    /// Sends every `(peer, tensor)` of `sends` and receives one tensor from every
    /// `(peer, shape, dtype)` of `recvs`, returned in `recvs` order. Unlike a `send` followed by a
    /// `recv`, this cannot deadlock on NCCL when two ranks send to each other (it is one NCCL group
    /// there); the other backends send (queued) and then receive.
    fn send_recv(&self, sends: &[(Rank, Tensor)], recvs: &[(Rank, Vec<usize>, DType)]) -> Result<Vec<Tensor>> {
        for (peer, xs) in sends {
            self.send(xs, *peer)?;
        }
        recvs.iter().map(|(peer, shape, dtype)| self.recv(*peer, shape, *dtype)).collect()
    }

    /// A second communicator over the same members, in the same rank order, whose ops may run
    /// while this one's do (from another thread): what lets the FSDP store gather the next block
    /// while the current one computes, since one group runs one op at a time. A collective call of
    /// every member. NCCL: `ncclCommSplit` with one color (a second device communicator); the socket
    /// and thread meshes: the world's second connection set (formed with the first). `None` where
    /// the backend has no independent lane; callers then run without overlap.
    fn duplicate(&self) -> Result<Option<Arc<dyn Collective>>> {
        Ok(None)
    }

    /// [`Collective::send_recv`] in two halves: the sends are on their way and the receives in
    /// flight when this returns; [`PendingRecv::wait`] returns what arrived. Between the two the
    /// caller computes what needs none of it (the halo exchange's interior rows) and makes no other
    /// call on this group. Socket and thread meshes receive on a helper thread meanwhile, so the
    /// transfer proceeds while the caller computes; the default completes the exchange at once.
    fn send_recv_start(
        &self,
        sends: &[(Rank, Tensor)],
        recvs: &[(Rank, Vec<usize>, DType)],
    ) -> Result<Box<dyn PendingRecv>> {
        Ok(Box::new(Received(self.send_recv(sends, recvs)?)))
    }

    /// Makes this rank's pending and future ops (of this group, its sub-groups and splits, where
    /// the backend shares state between them) fail at once: called when the job is being torn down
    /// (a peer failed or the supervisor shuts the world down) so that nothing keeps waiting. NCCL:
    /// `ncclCommAbort` on every communicator, which also stops kernels already spinning on a dead peer.
    fn abort(&self) {}

    fn all_reduce_sum(&self, xs: &Tensor) -> Result<Tensor> {
        self.all_reduce(xs, ReduceOp::Sum)
    }

    fn all_reduce_max(&self, xs: &Tensor) -> Result<Tensor> {
        self.all_reduce(xs, ReduceOp::Max)
    }
}

/// The receives of a [`Collective::send_recv_start`] in flight.
pub trait PendingRecv: Send {
    /// Blocks until every receive has arrived; returns them in the order they were asked for.
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>>;
}

/// Receives that have already arrived.
pub struct Received(pub Vec<Tensor>);

impl PendingRecv for Received {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        Ok(self.0)
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
/// The shape contract of [`Collective::all_gather_into`]: one clear error instead of a copy into
/// the wrong rows.
pub(crate) fn check_gather_into(xs: &Tensor, out: &Tensor, world_size: usize) -> Result<()> {
    let (x, o) = (xs.dims(), out.dims());
    let rows_fit = !x.is_empty() && o.len() == x.len() && o[0] == x[0] * world_size && o[1..] == x[1..];
    if !rows_fit || xs.dtype() != out.dtype() || !out.is_contiguous() {
        return Err(candle_core::Error::Msg(format!(
            "all_gather_into: {:?} {x:?} from each of {world_size} ranks does not fill a contiguous {:?} {o:?}",
            xs.dtype(),
            out.dtype()
        )));
    }
    Ok(())
}

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

/// The members of the caller's group in a [`Collective::split`]: every rank's `(color, key)` is
/// all-gathered, and the ranks sharing the caller's color are returned ordered by key, then rank
/// (`ncclCommSplit`'s order). `None` when the caller passed no color.
pub fn split_members(comm: &(impl Collective + ?Sized), color: Option<usize>, key: usize) -> Result<Option<Vec<Rank>>> {
    const NO_COLOR: u32 = u32::MAX;
    let to_u32 = |v: usize, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != NO_COLOR)
            .ok_or_else(|| candle_core::Error::Msg(format!("split: {what} {v} too large")))
    };
    let mine = [color.map(|c| to_u32(c, "color")).transpose()?.unwrap_or(NO_COLOR), to_u32(key, "key")?];
    let all = comm.all_gather(&Tensor::new(&mine, &Device::Cpu)?.reshape((1, 2))?, 0)?.to_vec2::<u32>()?;
    if all.len() != comm.world_size() {
        candle_core::bail!("split: gathered {} colors from a group of {}", all.len(), comm.world_size());
    }
    let Some(color) = color else { return Ok(None) };
    let mut members: Vec<(u32, usize)> =
        all.iter().enumerate().filter(|(_, ck)| ck[0] as usize == color).map(|(r, ck)| (ck[1], r)).collect();
    members.sort_unstable();
    Ok(Some(members.into_iter().map(|(_, r)| Rank(r)).collect()))
}

/// `(color, key)` for [`Collective::split`] from the caller's group in a partition of ranks (as a
/// [`crate::parallel::plan::ParallelPlan`] lists them): the group's lowest rank is its color, the
/// caller's position in the list its key; a group of one (or a caller outside `group`) gets no color.
pub fn color_of(group: &[Rank], me: Rank) -> (Option<usize>, usize) {
    match group.iter().position(|r| *r == me) {
        Some(key) if group.len() > 1 => (group.iter().map(|r| r.0).min(), key),
        _ => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `split` orders members by key (ties by rank), leaves uncoloured ranks out, and the groups
    /// it makes work (gathering the world ranks back in the new rank order).
    #[test]
    fn split_orders_by_key_and_forms_working_groups() -> Result<()> {
        let outs = ThreadComm::run(5, |world| {
            let r = world.rank().0;
            let (color, key) = [(Some(1), 5), (None, 0), (Some(1), 2), (Some(7), 0), (Some(1), 2)][r];
            let Some(group) = world.split(color, key)? else { return Ok(None) };
            let mine = Tensor::new(&[r as u32], &Device::Cpu)?;
            Ok(Some((group.rank().0, group.all_gather(&mine, 0)?.to_vec1::<u32>()?)))
        })?;
        assert_eq!(outs[1], None);
        // Color 1: keys 5, 2, 2 for ranks 0, 2, 4 → order 2, 4, 0.
        assert_eq!(outs[2], Some((0, vec![2, 4, 0])));
        assert_eq!(outs[4], Some((1, vec![2, 4, 0])));
        assert_eq!(outs[0], Some((2, vec![2, 4, 0])));
        assert_eq!(outs[3], Some((0, vec![3])));
        Ok(())
    }

    #[test]
    fn colors_of_plan_groups() {
        assert_eq!(color_of(&[Rank(3), Rank(1)], Rank(1)), (Some(1), 1));
        assert_eq!(color_of(&[Rank(3), Rank(1)], Rank(0)), (None, 0));
        assert_eq!(color_of(&[Rank(2)], Rank(2)), (None, 0));
    }

    #[test]
    fn sub_group_validation() {
        assert_eq!(check_sub_group(&[Rank(2), Rank(0)], 4, Rank(0)).unwrap(), 1);
        assert!(check_sub_group(&[Rank(1)], 4, Rank(0)).unwrap_err().to_string().contains("not a member"));
        assert!(check_sub_group(&[Rank(0), Rank(4)], 4, Rank(0)).unwrap_err().to_string().contains("out of range"));
        assert!(check_sub_group(&[Rank(0), Rank(0)], 4, Rank(0)).unwrap_err().to_string().contains("twice"));
        assert!(check_sub_group(&[], 4, Rank(0)).is_err());
    }
}
