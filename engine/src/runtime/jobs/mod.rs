//! Jobs as workers run them: the [`JobCtx`] a job gets (rank, device, collective, progress, phases,
//! cancellation) and [`run`], the dispatch from a [`Job`] to the code that does it.
//!
//! Adding a job (e.g. the Wan VAE decode): add a variant to `protocol::Job` with a plain-data spec,
//! and an arm below that calls a function `fn(&JobCtx, &Spec) -> Result<JobOutput, JobError>` in a new
//! module here. That function loads weights (reporting `ctx.add_weights_bytes`), wraps work in
//! `ctx.phase("…")`, calls `ctx.check_cancelled()?` between steps, and shards via `ctx.comm()`.

mod comm;
mod diagnostic;
mod generate;
mod text;
mod vae;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::protocol::{Job, JobOutput, LogLevel, PhaseSpan, WorkerEvent};
use super::telemetry::{PhaseToken, Telemetry};
use crate::parallel::comm::Collective;
use crate::parallel::{Rank, Topology};

/// Why a job did not produce an output.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Every rank agreed to stop (see [`JobCtx::check_cancelled`]).
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    TensorIo(#[from] crate::tensor_io::TensorIoError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Text(#[from] crate::text::TextError),
}

/// Sends an event to the supervisor.
pub type EmitFn = Arc<dyn Fn(WorkerEvent) + Send + Sync>;

/// What a running job can see and do.
pub struct JobCtx {
    topology: Topology,
    device: Device,
    comm: Arc<dyn Collective>,
    cancel: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    emit: EmitFn,
}

impl JobCtx {
    pub fn new(
        topology: Topology,
        device: Device,
        comm: Arc<dyn Collective>,
        cancel: Arc<AtomicBool>,
        telemetry: Arc<Telemetry>,
        emit: EmitFn,
    ) -> Self {
        Self { topology, device, comm, cancel, telemetry, emit }
    }

    pub fn rank(&self) -> Rank {
        self.topology.rank
    }

    pub fn world_size(&self) -> usize {
        self.topology.world_size
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The world's collective (sub-groups via `sub_group`).
    pub fn comm(&self) -> &Arc<dyn Collective> {
        &self.comm
    }

    pub fn progress(&self, step: u64, total: u64, message: impl Into<String>) {
        (self.emit)(WorkerEvent::Progress { step, total, message: message.into() });
    }

    /// A message for the user (shown in the app), beyond the worker's own tracing log.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        (self.emit)(WorkerEvent::Log { level, message: message.into() });
    }

    /// Any other event (e.g. a finished VAE piece) to the supervisor.
    pub fn emit(&self, event: WorkerEvent) {
        (self.emit)(event);
    }

    pub fn add_weights_bytes(&self, bytes: u64) {
        self.telemetry.add_weights_bytes(bytes);
    }

    /// Times a named phase (and its memory peak) until the returned guard is dropped.
    pub fn phase(&self, name: &str) -> Phase<'_> {
        tracing::debug!("phase {name} begins");
        let start_secs = self.telemetry.job_elapsed_secs();
        Phase { ctx: self, name: name.to_string(), start_secs, token: Some(self.telemetry.begin_phase()) }
    }

    /// Collective: returns `Err(Cancelled)` on every rank if a cancel reached *any* rank, so all ranks
    /// stop at the same step and no collective is left half-done. Call it at the same points on all
    /// ranks (e.g. between denoising steps).
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        let mine = u8::from(self.cancel.load(Ordering::SeqCst));
        let flag = Tensor::new(&[mine], &Device::Cpu)?;
        let any = self.comm.all_reduce_max(&flag)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if any.first().copied().unwrap_or(0) > 0 {
            return Err(JobError::Cancelled);
        }
        Ok(())
    }
}

/// A running phase; reports a `PhaseSpan` when dropped.
pub struct Phase<'a> {
    ctx: &'a JobCtx,
    name: String,
    start_secs: f64,
    token: Option<PhaseToken>,
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let (seconds, peak_bytes, start_bytes) = self.ctx.telemetry.end_phase(token);
            tracing::debug!("phase {} took {seconds:.3} s, peak {peak_bytes} B", self.name);
            (self.ctx.emit)(WorkerEvent::PhaseSpan(PhaseSpan {
                name: std::mem::take(&mut self.name),
                start_secs: self.start_secs,
                seconds,
                peak_bytes,
                start_bytes,
            }));
        }
    }
}

/// Runs one job on this rank.
pub fn run(ctx: &JobCtx, job: &Job) -> Result<JobOutput, JobError> {
    match job {
        Job::Ping => Ok(JobOutput::Pong { rank: ctx.rank(), pid: std::process::id() }),
        Job::CommCheck(spec) => comm::check(ctx, spec),
        Job::CommBench(spec) => comm::bench(ctx, spec),
        Job::Diagnostic(d) => diagnostic::run(ctx, d),
        Job::VaeDecode(spec) => vae::decode(ctx, spec),
        Job::VaeEncode(spec) => vae::encode(ctx, spec),
        Job::EncodePrompt(spec) => text::encode_prompt(ctx, spec),
        Job::Generate(spec) => generate::run(ctx, spec),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::parallel::comm::check::CollectiveOp;
    use crate::parallel::comm::wire::WireDType;
    use crate::parallel::comm::ThreadComm;
    use crate::runtime::protocol::{BenchSpec, DeviceKind, Diagnostic};
    use crate::runtime::telemetry::Sampler;

    /// Runs `job` on an in-process world of `n` threads; returns outputs and each rank's events.
    fn run_threads(
        n: usize,
        job: &Job,
        cancel_rank: Option<usize>,
    ) -> Vec<(Result<JobOutput, String>, Vec<WorkerEvent>)> {
        let comms = ThreadComm::world(n, std::time::Duration::from_secs(10));
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .enumerate()
                .map(|(rank, comm)| {
                    s.spawn(move || {
                        let events = Arc::new(Mutex::new(Vec::new()));
                        let sink = events.clone();
                        let cancel = Arc::new(AtomicBool::new(cancel_rank == Some(rank)));
                        let ctx = JobCtx::new(
                            Topology { rank: Rank(rank), world_size: n, device_ordinal: 0 },
                            Device::Cpu,
                            Arc::new(comm),
                            cancel,
                            Arc::new(Telemetry::new(Sampler::new(DeviceKind::Cpu, 0))),
                            Arc::new(move |e| sink.lock().unwrap().push(e)),
                        );
                        let out = run(&ctx, job).map_err(|e| e.to_string());
                        drop(ctx);
                        let events = events.lock().unwrap().clone();
                        (out, events)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn cancel_on_one_rank_stops_every_rank_at_the_same_step() {
        let results = run_threads(3, &Job::Diagnostic(Diagnostic::Sleep { ms: 10_000 }), Some(2));
        for (out, _) in results {
            assert_eq!(out.unwrap_err(), "cancelled");
        }
    }

    #[test]
    fn bench_reports_a_row_per_op_and_size_on_rank_zero() {
        let spec = BenchSpec {
            ops: vec![
                CollectiveOp::AllReduce(crate::parallel::comm::ReduceOp::Sum),
                CollectiveOp::AllGather { dim: 0 },
            ],
            sizes_bytes: vec![64, 4096],
            dtype: WireDType::F32,
            iters: 2,
            warmup: 1,
        };
        let results = run_threads(2, &Job::CommBench(spec), None);
        let JobOutput::Bench(rows) = results[0].0.as_ref().unwrap() else { panic!("rank 0 returns the table") };
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.mean_secs > 0.0 && r.algbw_gbps > 0.0));
        assert_eq!(results[1].0.as_ref().unwrap(), &JobOutput::None);
        let phases = results[0].1.iter().filter(|e| matches!(e, WorkerEvent::PhaseSpan(_))).count();
        assert_eq!(phases, 2, "one phase per op");
    }
}
