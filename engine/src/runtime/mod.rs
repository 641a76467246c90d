//! The multi-process runtime: one `tessera-worker` OS process per device.
//!
//! ```text
//!  caller thread (CLI / app engine thread)          worker processes (own process group each)
//!  ┌──────────────────────────────────┐  ToWorker    ┌─────────────────────────────────────┐
//!  │ Supervisor                       │ ───────────▶ │ rank r: control loop (main thread)  │
//!  │  run_job(job, on_event)          │  control.sock│   ├ job thread: jobs::run(ctx, job) │
//!  │  ├ reader thread per rank ─┐     │ ◀─────────── │   ├ telemetry thread (10 Hz)        │
//!  │  ├ stderr thread per rank  │     │  FromWorker  │   └ Collective (data plane)         │
//!  │  └ inbox (bounded) ◀───────┘     │              │       LocalSocket mesh | NCCL       │
//!  └──────────────────────────────────┘              └─────────────────────────────────────┘
//! ```
//!
//! Lifecycle: [`Supervisor::spawn`] starts the workers (`launch`), waits for every `Hello` (a rank that
//! does not arrive in time is named), sends `Init`, and waits for `Ready` once the data plane is formed.
//! [`Supervisor::run_job`] sends the same [`Job`] to every rank and streams [`JobEvent`]s.
//!
//! Failure handling:
//! - A worker that exits or closes its control socket fails the job within ~100 ms with
//!   [`RuntimeError::WorkerExited`] naming the rank and its exit code or signal.
//! - A job error (or a panic, caught in the worker) comes back as [`RuntimeError::WorkerFailed`].
//! - In both cases the data plane may be mid-collective, so the whole world is stopped (`Shutdown`,
//!   a grace period, then `SIGKILL` to each worker's process group); spawn a new `Supervisor` to go on.
//! - Cancel ([`CancelHandle`]) is cooperative: jobs agree on it collectively at step boundaries, so
//!   every rank stops at the same step, the data plane stays in sync, and the world stays usable.
//! - Workers set `PR_SET_PDEATHSIG = SIGKILL`: if the supervising *thread* dies, they die. Create the
//!   `Supervisor` on a thread that outlives it.

pub mod doctor;
pub mod jobs;
pub mod launch;
pub mod protocol;
mod report;
mod supervisor;
pub mod telemetry;
pub mod worker;

use std::path::PathBuf;

pub use launch::{resolve_worker_exe, CommBackend, WorkerArgs, WORKER_EXE_ENV};
pub use protocol::{DeviceInfo, DeviceKind, Job, JobId, JobOutput};
pub use report::{JobEvent, PhaseReport, RankReport, RunReport};
pub use supervisor::{device_ordinals, CancelHandle, JobResult, Supervisor, WorkerInfo, WorldSpec};

use crate::parallel::Rank;

/// Everything the supervisor can report. Messages name the rank involved; paths come last.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("worker executable not found (build it with `cargo build -p tessera_engine --bin tessera-worker` or set TESSERA_WORKER_EXE); searched: {searched:?}")]
    WorkerExeNotFound { searched: Vec<PathBuf> },
    #[error("cannot start rank {rank}: {source}: {}", .exe.display())]
    Spawn { rank: Rank, exe: PathBuf, source: std::io::Error },
    #[error("cannot create the rendezvous directory: {source}: {}", .dir.display())]
    Rendezvous { dir: PathBuf, source: std::io::Error },
    #[error("handshake failed after {secs:.1} s: {detail}")]
    Handshake {
        detail: String,
        secs: f64,
        /// Pids of every worker that was started (all are stopped before this error is returned).
        worker_pids: Vec<u32>,
    },
    #[error("rank {rank} exited: {status}")]
    WorkerExited { rank: Rank, status: String },
    #[error("rank {rank} failed: {message}")]
    WorkerFailed { rank: Rank, message: String },
    #[error("protocol error with rank {rank}: {source}")]
    Protocol { rank: Rank, source: protocol::ProtocolError },
    #[error("job cancelled")]
    Cancelled,
    #[error("ranks {ranks:?} did not stop within {secs:.1} s of the cancel request; the world was stopped")]
    CancelTimeout { ranks: Vec<Rank>, secs: f64 },
    #[error("the worker world is down ({reason}); spawn a new Supervisor")]
    WorldDown { reason: String },
    #[error("rank-to-GPU map: {0}")]
    DeviceMap(String),
}
