//! Parallel execution: who is who in a world of ranks, and how ranks talk.
//!
//! - [`Rank`], [`Topology`]: plain identities handed to every worker at startup.
//! - [`comm`]: the [`comm::Collective`] trait (the data plane model code uses) and its backends:
//!   [`comm::SingleRank`] (world of one), LocalSocket ([`comm::SocketListener`] → [`comm::MeshComm`]:
//!   CPU worker processes over Unix sockets), [`comm::ThreadComm`] (in-process ranks, for fast tests)
//!   and, behind the `cuda` feature, `comm::NcclComm`.
//! - [`fsdp`]: FSDP-style sharded weights (each rank keeps a slice, a unit is gathered before use).
//! - [`plan`]: the [`plan::ParallelPlan`] of a generation (ranks, Ulysses, CFG, FSDP, VAE parallel) and
//!   its validation.

pub mod comm;
pub mod fsdp;
pub mod plan;

use serde::{Deserialize, Serialize};

/// Index of a process in a world (or of a member in a sub-group), `0..world_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rank(pub usize);

impl std::fmt::Display for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a worker sits in its world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub rank: Rank,
    pub world_size: usize,
    /// CUDA device index (after `CUDA_VISIBLE_DEVICES`); equal to the rank for one worker per GPU.
    pub device_ordinal: usize,
}
