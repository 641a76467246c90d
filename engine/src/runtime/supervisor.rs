//! `Supervisor`: spawns the workers, runs the handshake, routes jobs and events, detects dead
//! workers, and stops the world (message, grace period, `SIGKILL` to each process group).

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::launch::{resolve_worker_exe, CommBackend, WorkerArgs};
use super::protocol::LogLevel;
use super::protocol::{
    read_msg, write_msg, DeviceInfo, DeviceKind, FromWorker, Job, JobData, JobId, JobOutput, RankSummary, ToWorker,
    WorkerEvent, PROTOCOL_VERSION,
};
use super::report::{JobEvent, PhaseReport, RankReport, RunReport};
use super::RuntimeError;
use crate::parallel::Rank;

/// How the world is started. `Default` is one CPU rank with production timeouts.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub ranks: usize,
    pub device: DeviceKind,
    pub comm: CommBackend,
    /// `None`: `$TESSERA_WORKER_EXE`, else `tessera-worker` beside the current executable.
    pub worker_exe: Option<PathBuf>,
    /// For every rank to connect, say hello and form the data plane.
    pub handshake_timeout: Duration,
    /// Data plane: how long a collective may wait on a live peer (a dead one fails at once).
    pub comm_timeout: Duration,
    /// Between `Shutdown` and `SIGKILL`.
    pub shutdown_grace: Duration,
    /// Between a cancel request and stopping the world because ranks did not return to idle.
    pub cancel_grace: Duration,
    /// CPU threads per worker (`RAYON_NUM_THREADS`); `None`: available cores / ranks.
    pub threads_per_rank: Option<usize>,
    /// Extra environment for the workers (e.g. `RUST_LOG`, `CUDA_VISIBLE_DEVICES`).
    pub env: Vec<(String, String)>,
    /// Test knob: this rank sleeps this long before connecting (to test handshake timeouts).
    pub debug_connect_delay: Option<(Rank, Duration)>,
    /// GPU of each rank: rank `r` runs on `gpus[r % gpus.len()]` (so `[0]` puts every rank on GPU 0);
    /// empty: rank `r` on GPU `r`. See [`device_ordinals`].
    pub gpus: Vec<usize>,
}

/// The device ordinal of every rank of `spec` (the rank→GPU map). Several ranks on one GPU need the
/// socket backend: NCCL refuses two ranks of a communicator on one device.
pub fn device_ordinals(spec: &WorldSpec) -> Result<Vec<usize>, RuntimeError> {
    let ordinals: Vec<usize> =
        (0..spec.ranks).map(|r| if spec.gpus.is_empty() { r } else { spec.gpus[r % spec.gpus.len()] }).collect();
    if spec.device == DeviceKind::Cuda && spec.comm.resolve(spec.device) == CommBackend::Nccl {
        for (r, ord) in ordinals.iter().enumerate() {
            if let Some(first) = ordinals[..r].iter().position(|o| o == ord) {
                return Err(RuntimeError::DeviceMap(format!(
                    "ranks {first} and {r} both map to GPU {ord}, which NCCL does not allow; use the socket \
                     backend (--comm socket) to share a GPU, or give each rank its own GPU (--gpus)"
                )));
            }
        }
    }
    Ok(ordinals)
}

impl Default for WorldSpec {
    fn default() -> Self {
        Self {
            ranks: 1,
            device: DeviceKind::Cpu,
            comm: CommBackend::Auto,
            worker_exe: None,
            handshake_timeout: Duration::from_secs(20),
            comm_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(2),
            cancel_grace: Duration::from_secs(30),
            threads_per_rank: None,
            env: Vec::new(),
            debug_connect_delay: None,
            gpus: Vec::new(),
        }
    }
}

/// A running worker, as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub rank: Rank,
    pub pid: u32,
    pub device: DeviceInfo,
}

/// Cancels the job currently running in a [`Supervisor`]; cheap to clone, usable from any thread.
#[derive(Clone, Debug, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A finished job: each rank's output (index = rank), the data ranks sent back while it ran (in
/// arrival order), and the run report.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub outputs: Vec<JobOutput>,
    pub data: Vec<(Rank, JobData)>,
    pub report: RunReport,
}

enum Inbound {
    Msg(usize, FromWorker),
    Closed(usize),
}

struct Worker {
    rank: usize,
    child: Child,
    pid: u32,
    control: Option<UnixStream>,
    device: Option<DeviceInfo>,
    status: Option<ExitStatus>,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

/// Removes the rendezvous directory (and any socket left in it) when dropped.
struct RendezvousDir(PathBuf);

impl Drop for RendezvousDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Owns a world of worker processes. Not `Sync`: one job at a time, from one thread.
pub struct Supervisor {
    spec: WorldSpec,
    workers: Vec<Worker>,
    inbox: Receiver<Inbound>,
    cancel: CancelHandle,
    next_job: u64,
    down: Option<String>,
    // Declared last: removed after the workers are gone.
    dir: RendezvousDir,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("ranks", &self.workers.len())
            .field("pids", &self.workers.iter().map(|w| w.pid).collect::<Vec<_>>())
            .field("dir", &self.dir.0)
            .field("down", &self.down)
            .finish()
    }
}

/// "exit code 3" / "signal 9 (SIGKILL)".
pub(crate) fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({s})"),
            Err(_) => format!("signal {sig}"),
        },
        None => format!("{status}"),
    }
}

fn rendezvous_dir() -> Result<RendezvousDir, RuntimeError> {
    let dir = std::env::temp_dir().join(format!("tessera-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir(&dir).map_err(|source| RuntimeError::Rendezvous { dir: dir.clone(), source })?;
    Ok(RendezvousDir(dir))
}

/// Re-logs a worker's stderr line by line with a `[rank N]` prefix, keeping the worker's level.
fn forward_stderr(rank: usize, stderr: std::process::ChildStderr) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("worker-{rank}-stderr")).spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let level = line.split_whitespace().next().unwrap_or("");
            match level {
                "ERROR" => tracing::error!(target: "tessera::worker", "[rank {rank}] {line}"),
                "WARN" => tracing::warn!(target: "tessera::worker", "[rank {rank}] {line}"),
                "DEBUG" | "TRACE" => tracing::debug!(target: "tessera::worker", "[rank {rank}] {line}"),
                _ => tracing::info!(target: "tessera::worker", "[rank {rank}] {line}"),
            }
        }
    })
}

fn read_control(rank: usize, mut stream: UnixStream, tx: SyncSender<Inbound>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("worker-{rank}-control")).spawn(move || loop {
        match read_msg::<FromWorker>(&mut stream) {
            Ok(msg) => {
                if tx.send(Inbound::Msg(rank, msg)).is_err() {
                    break;
                }
            }
            Err(_) => {
                let _ = tx.send(Inbound::Closed(rank));
                break;
            }
        }
    })
}

impl Supervisor {
    /// Starts `spec.ranks` workers and waits until every one is connected and idle.
    pub fn spawn(spec: WorldSpec) -> Result<Self, RuntimeError> {
        let exe = resolve_worker_exe(spec.worker_exe.as_deref())?;
        let ordinals = device_ordinals(&spec)?;
        let dir = rendezvous_dir()?;
        let control_path = dir.0.join("control.sock");
        let listener = UnixListener::bind(&control_path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| RuntimeError::Rendezvous { dir: control_path.clone(), source })?;
        let threads = spec.threads_per_rank.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            (cores / spec.ranks.max(1)).max(1)
        });
        tracing::info!(
            "spawning {} {} worker(s) ({threads} thread(s) each): {}",
            spec.ranks,
            spec.device,
            exe.display()
        );

        let (tx, inbox) = sync_channel(4096);
        let mut sup = Supervisor {
            spec: spec.clone(),
            workers: Vec::new(),
            inbox,
            cancel: CancelHandle::default(),
            next_job: 1,
            down: None,
            dir,
        };
        for (rank, &device_ordinal) in ordinals.iter().enumerate() {
            let args = WorkerArgs {
                doctor: false,
                rank,
                world_size: spec.ranks,
                rendezvous: Some(sup.dir.0.clone()),
                device: spec.device,
                device_ordinal,
                comm: spec.comm.resolve(spec.device),
                parent_pid: Some(std::process::id()),
                handshake_timeout_ms: spec.handshake_timeout.as_millis() as u64,
                comm_timeout_ms: spec.comm_timeout.as_millis() as u64,
                debug_connect_delay_ms: spec
                    .debug_connect_delay
                    .filter(|(r, _)| r.0 == rank)
                    .map(|(_, d)| d.as_millis() as u64),
            };
            let mut cmd = Command::new(&exe);
            cmd.args(args.to_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .env("RAYON_NUM_THREADS", threads.to_string())
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                // Own process group: signals go to the worker and anything it starts.
                .process_group(0);
            let mut child =
                cmd.spawn().map_err(|source| RuntimeError::Spawn { rank: Rank(rank), exe: exe.clone(), source })?;
            let pid = child.id();
            let mut threads = Vec::new();
            if let Some(stderr) = child.stderr.take() {
                if let Ok(t) = forward_stderr(rank, stderr) {
                    threads.push(t);
                }
            }
            sup.workers.push(Worker { rank, child, pid, control: None, device: None, status: None, threads });
        }
        let started = Instant::now();
        match sup.handshake(&listener, started, &tx) {
            Ok(()) => {
                tracing::info!("world of {} ready in {:.2} s", spec.ranks, started.elapsed().as_secs_f64());
                Ok(sup)
            }
            Err(detail) => {
                let worker_pids = sup.workers.iter().map(|w| w.pid).collect();
                sup.stop_world(&format!("handshake failed: {detail}"));
                Err(RuntimeError::Handshake { detail, secs: started.elapsed().as_secs_f64(), worker_pids })
            }
        }
    }

    /// Accepts every worker's `Hello`, sends `Init`, waits for every `Ready`, then starts the readers.
    fn handshake(&mut self, listener: &UnixListener, started: Instant, tx: &SyncSender<Inbound>) -> Result<(), String> {
        let deadline = started + self.spec.handshake_timeout;
        let n = self.workers.len();
        let mut nccl_id = None;
        // Phase 1: Hello from everyone.
        while self.workers.iter().any(|w| w.control.is_none()) {
            // Deadline first: a rank that gave up waiting for a missing peer is not the culprit.
            if Instant::now() >= deadline {
                return Err(self.missing("did not connect", |w| w.control.is_none()));
            }
            self.check_startup_exits()?;
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                    stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_read_timeout(Some(remaining)))
                        .map_err(|e| format!("control socket: {e}"))?;
                    let hello = read_msg::<FromWorker>(&mut stream).map_err(|e| format!("reading a hello: {e}"))?;
                    let FromWorker::Hello { rank, protocol_version, pid, device, nccl_id: id } = hello else {
                        return Err(format!("expected a hello, got {hello:?}"));
                    };
                    if protocol_version != PROTOCOL_VERSION {
                        return Err(format!(
                            "rank {rank} speaks protocol {protocol_version}, this engine {PROTOCOL_VERSION} \
                             (worker executable from another build?)"
                        ));
                    }
                    let w = self.workers.get_mut(rank.0).ok_or(format!("hello from unknown rank {rank}"))?;
                    if w.control.is_some() || w.pid != pid {
                        return Err(format!("unexpected hello for rank {rank} from pid {pid}"));
                    }
                    if rank.0 == 0 {
                        nccl_id = id;
                    }
                    w.device = Some(device);
                    w.control = Some(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("accepting workers: {e}")),
            }
        }
        // Phase 2: Init to everyone, then Ready from everyone (the data plane forms in between).
        let init = ToWorker::Init { protocol_version: PROTOCOL_VERSION, world_size: n, nccl_id };
        for w in &mut self.workers {
            let stream = w.control.as_mut().ok_or("control stream missing")?;
            write_msg(stream, &init).map_err(|e| format!("sending init to rank {}: {e}", w.rank))?;
        }
        let mut ready = vec![false; n];
        for rank in 0..n {
            let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            let stream = self.workers[rank].control.as_mut().ok_or("control stream missing")?;
            stream.set_read_timeout(Some(remaining)).map_err(|e| format!("control socket: {e}"))?;
            match read_msg::<FromWorker>(stream) {
                Ok(FromWorker::Ready { .. }) => ready[rank] = true,
                Ok(FromWorker::Failed { message, .. }) => {
                    return Err(format!("rank {rank} failed to start: {message}"))
                }
                Ok(other) => return Err(format!("rank {rank}: expected ready, got {other:?}")),
                Err(e) => {
                    self.check_startup_exits()?;
                    let _ = e;
                    return Err(self.missing("did not join the data plane", |w| !ready[w.rank]));
                }
            }
        }
        // Steady state: one reader thread per worker feeding the inbox.
        for w in &mut self.workers {
            let stream = w.control.as_ref().ok_or("control stream missing")?;
            stream.set_read_timeout(None).map_err(|e| format!("control socket: {e}"))?;
            let reader = stream.try_clone().map_err(|e| format!("control socket: {e}"))?;
            let t = read_control(w.rank, reader, tx.clone()).map_err(|e| format!("reader thread: {e}"))?;
            w.threads.push(t);
        }
        Ok(())
    }

    fn check_startup_exits(&mut self) -> Result<(), String> {
        for w in &mut self.workers {
            if let Some(status) = w.poll_exit() {
                return Err(format!("rank {} exited during startup: {}", w.rank, describe_status(status)));
            }
        }
        Ok(())
    }

    fn missing(&mut self, what: &str, pred: impl Fn(&Worker) -> bool) -> String {
        let parts: Vec<String> = self
            .workers
            .iter_mut()
            .filter(|w| pred(w))
            .map(|w| {
                let state = match w.poll_exit() {
                    Some(s) => describe_status(s),
                    None => "still running".into(),
                };
                format!("rank {} (pid {}, {state})", w.rank, w.pid)
            })
            .collect();
        format!("{} {what} within {:.1} s", parts.join(", "), self.spec.handshake_timeout.as_secs_f64())
    }

    pub fn world_size(&self) -> usize {
        self.workers.len()
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers
            .iter()
            .filter_map(|w| w.device.clone().map(|device| WorkerInfo { rank: Rank(w.rank), pid: w.pid, device }))
            .collect()
    }

    /// The rendezvous directory (sockets) of this world; removed when the supervisor is dropped.
    pub fn rendezvous_dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Whether the world can take jobs (it cannot after a worker died or a job failed).
    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// Between jobs: notices a worker that died while the world was idle (its control connection
    /// closed, or its process exited), stops the rest of the world and says which rank and how.
    /// Cheap (no message to the workers); call it whenever the caller is idle, e.g. every second.
    pub fn check_idle(&mut self) -> Result<(), RuntimeError> {
        if let Some(reason) = &self.down {
            return Err(RuntimeError::WorldDown { reason: reason.clone() });
        }
        let mut closed = None;
        while let Ok(msg) = self.inbox.try_recv() {
            if let Inbound::Closed(rank) = msg {
                closed.get_or_insert(rank);
            }
        }
        let dead = closed.or_else(|| self.workers.iter_mut().position(|w| w.poll_exit().is_some()));
        match dead {
            Some(rank) => Err(self.fail_dead(rank, &mut |_: &JobEvent| {})),
            None => Ok(()),
        }
    }

    /// Runs `job` on every rank and blocks until all are done, calling `on_event` for each event.
    /// A cancel via [`CancelHandle`] returns [`RuntimeError::Cancelled`] once every rank is idle again.
    pub fn run_job(&mut self, job: Job, mut on_event: impl FnMut(&JobEvent)) -> Result<JobResult, RuntimeError> {
        if let Some(reason) = &self.down {
            return Err(RuntimeError::WorldDown { reason: reason.clone() });
        }
        // Drop anything left from a previous job (late telemetry).
        while self.inbox.try_recv().is_ok() {}
        self.cancel.0.store(false, Ordering::SeqCst);
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let n = self.workers.len();
        let started = Instant::now();
        tracing::debug!("job {job_id:?} on {n} rank(s): {job:?}");
        on_event(&JobEvent::Started { world_size: n });
        for rank in 0..n {
            let msg = ToWorker::Run { job_id, job: job.clone() };
            if self.send(rank, &msg).is_err() {
                return Err(self.fail_dead(rank, &mut on_event));
            }
        }

        let mut outputs: Vec<Option<(JobOutput, RankSummary)>> = vec![None; n];
        let mut data = Vec::new();
        let mut cancelled = vec![false; n];
        let mut phases: Vec<Vec<PhaseReport>> = vec![Vec::new(); n];
        let mut cancel_deadline: Option<Instant> = None;
        let finished = |outputs: &[Option<_>], cancelled: &[bool]| (0..n).all(|r| outputs[r].is_some() || cancelled[r]);
        while !finished(&outputs, &cancelled) {
            match self.inbox.recv_timeout(Duration::from_millis(50)) {
                Ok(Inbound::Msg(rank, msg)) => match msg {
                    FromWorker::Event { job_id: id, event: WorkerEvent::Data(d) } if id == job_id => {
                        data.push((Rank(rank), d));
                    }
                    FromWorker::Event { job_id: id, event } if id == job_id => {
                        let ev = translate(Rank(rank), event, self.spec.device);
                        if let JobEvent::PhaseSpan { name, start_secs, seconds, peak_bytes, start_bytes, .. } = &ev {
                            phases[rank].push(PhaseReport {
                                name: name.clone(),
                                start_secs: *start_secs,
                                seconds: *seconds,
                                peak_bytes: *peak_bytes,
                                start_bytes: *start_bytes,
                            });
                        }
                        on_event(&ev);
                    }
                    FromWorker::Done { job_id: id, output, summary } if id == job_id => {
                        outputs[rank] = Some((output, summary));
                    }
                    FromWorker::Cancelled { job_id: id } if id == job_id => cancelled[rank] = true,
                    FromWorker::Failed { message, .. } => {
                        // A rank whose peer died fails with "rank N closed its connection", often
                        // before the dead process is reaped: name the dead rank (the cause) if one
                        // exits within a short grace.
                        let deadline = Instant::now() + Duration::from_millis(500);
                        loop {
                            if let Some(dead) = self.workers.iter_mut().position(|w| w.poll_exit().is_some()) {
                                return Err(self.fail_dead(dead, &mut on_event));
                            }
                            if Instant::now() > deadline {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let err = RuntimeError::WorkerFailed { rank: Rank(rank), message: message.clone() };
                        on_event(&JobEvent::Failed { rank: Some(Rank(rank)), message });
                        self.stop_world(&err.to_string());
                        return Err(err);
                    }
                    other => tracing::debug!("rank {rank}: ignoring {other:?} (not for job {job_id:?})"),
                },
                Ok(Inbound::Closed(rank)) => return Err(self.fail_dead(rank, &mut on_event)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.fail_dead(0, &mut on_event)),
            }
            // A worker can die without its reader noticing first (e.g. a stuck write); poll too.
            if let Some(rank) = self.workers.iter_mut().position(|w| w.poll_exit().is_some()) {
                return Err(self.fail_dead(rank, &mut on_event));
            }
            if cancel_deadline.is_none() && self.cancel.0.load(Ordering::SeqCst) {
                tracing::info!("cancelling job {job_id:?}");
                for rank in 0..n {
                    if self.send(rank, &ToWorker::Cancel { job_id }).is_err() {
                        return Err(self.fail_dead(rank, &mut on_event));
                    }
                }
                cancel_deadline = Some(Instant::now() + self.spec.cancel_grace);
            }
            if cancel_deadline.is_some_and(|d| Instant::now() > d) {
                let ranks = (0..n).filter(|&r| outputs[r].is_none() && !cancelled[r]).map(Rank).collect();
                let err = RuntimeError::CancelTimeout { ranks, secs: self.spec.cancel_grace.as_secs_f64() };
                on_event(&JobEvent::Failed { rank: None, message: err.to_string() });
                self.stop_world(&err.to_string());
                return Err(err);
            }
        }
        if cancelled.iter().any(|&c| c) {
            on_event(&JobEvent::Cancelled);
            return Err(RuntimeError::Cancelled);
        }
        let wall_seconds = started.elapsed().as_secs_f64();
        let mut report = RunReport { wall_seconds, ranks: Vec::with_capacity(n) };
        let mut outs = Vec::with_capacity(n);
        for (rank, (slot, phases)) in outputs.into_iter().zip(phases).enumerate() {
            let (output, summary) = slot.unwrap_or_default();
            let device = self.workers[rank].device.as_ref().map(DeviceInfo::label).unwrap_or_default();
            report.ranks.push(RankReport {
                rank,
                device,
                seconds: summary.seconds,
                peak_bytes: summary.peak_bytes,
                peak_rss_bytes: summary.peak_rss_bytes,
                weights_bytes: summary.weights_bytes,
                phases,
            });
            outs.push(output);
        }
        on_event(&JobEvent::Finished { wall_seconds });
        Ok(JobResult { outputs: outs, data, report })
    }

    fn send(&mut self, rank: usize, msg: &ToWorker) -> Result<(), ()> {
        let stream = self.workers[rank].control.as_mut().ok_or(())?;
        write_msg(stream, msg).map_err(|_| ())
    }

    /// A rank's control connection closed or its process exited: find out how, stop everything.
    fn fail_dead(&mut self, rank: usize, on_event: &mut impl FnMut(&JobEvent)) -> RuntimeError {
        // The exit status usually follows the closed socket within milliseconds.
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            if let Some(s) = self.workers[rank].poll_exit() {
                break describe_status(s);
            }
            if Instant::now() > deadline {
                break "closed its control connection but is still running".to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let err = RuntimeError::WorkerExited { rank: Rank(rank), status };
        tracing::error!("{err}");
        on_event(&JobEvent::Failed { rank: Some(Rank(rank)), message: err.to_string() });
        self.stop_world(&err.to_string());
        err
    }

    /// `Shutdown` to every live worker, a grace period, then `SIGKILL` to every process group.
    fn stop_world(&mut self, reason: &str) {
        if self.down.is_none() {
            self.down = Some(reason.to_string());
        }
        for rank in 0..self.workers.len() {
            let _ = self.send(rank, &ToWorker::Shutdown);
        }
        let deadline = Instant::now() + self.spec.shutdown_grace;
        while Instant::now() < deadline && self.workers.iter_mut().any(|w| w.poll_exit().is_none()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for w in &mut self.workers {
            // The group outlives its leader only if the worker started children; kill it regardless.
            let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
            if w.status.is_none() {
                w.status = w.child.wait().ok();
            }
            if let Some(stream) = w.control.take() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        for w in &mut self.workers {
            for t in w.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// Stops every worker (graceful first). Also done on drop.
    pub fn shutdown(mut self) {
        self.stop_world("shut down");
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.workers.iter().any(|w| w.status.is_none()) {
            self.stop_world("supervisor dropped");
        }
    }
}

/// Worker event → caller event, choosing the "used" figure that matters on this device.
fn translate(rank: Rank, event: WorkerEvent, device: DeviceKind) -> JobEvent {
    match event {
        WorkerEvent::Progress { step, total, message } => JobEvent::Progress { rank, step, total, message },
        WorkerEvent::Memory(s) => {
            let (used_bytes, peak_bytes) = match (device, s.device_used_bytes) {
                (DeviceKind::Cuda, Some(used)) => (used, used.max(s.heap_peak_bytes)),
                _ => (s.heap_live_bytes, s.heap_peak_bytes),
            };
            JobEvent::Memory {
                rank,
                elapsed_secs: s.elapsed_secs,
                used_bytes,
                peak_bytes,
                rss_bytes: s.rss_bytes,
                device_total_bytes: s.device_total_bytes,
            }
        }
        WorkerEvent::PhaseSpan(p) => JobEvent::PhaseSpan {
            rank,
            name: p.name,
            start_secs: p.start_secs,
            seconds: p.seconds,
            peak_bytes: p.peak_bytes,
            start_bytes: p.start_bytes,
        },
        WorkerEvent::Log { level, message } => JobEvent::Log { rank, level, message },
        WorkerEvent::VaePiece(piece) => JobEvent::VaePiece { rank, piece },
        WorkerEvent::DenoisePreview(preview) => JobEvent::DenoisePreview { rank, preview },
        // Collected by `run_job` before translation; never an event.
        WorkerEvent::Data(_) => JobEvent::Log { rank, level: LogLevel::Warn, message: "unrouted job data".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn rank_to_gpu_map() {
        let spec = |ranks, device, comm, gpus: &[usize]| WorldSpec {
            ranks,
            device,
            comm,
            gpus: gpus.to_vec(),
            ..WorldSpec::default()
        };
        let cuda = DeviceKind::Cuda;
        assert_eq!(device_ordinals(&spec(3, cuda, CommBackend::Auto, &[])).unwrap(), vec![0, 1, 2]);
        assert_eq!(device_ordinals(&spec(4, cuda, CommBackend::Socket, &[0])).unwrap(), vec![0, 0, 0, 0]);
        assert_eq!(device_ordinals(&spec(4, cuda, CommBackend::Socket, &[1, 0])).unwrap(), vec![1, 0, 1, 0]);
        assert_eq!(device_ordinals(&spec(2, cuda, CommBackend::Nccl, &[3, 2])).unwrap(), vec![3, 2]);
        let err = device_ordinals(&spec(3, cuda, CommBackend::Auto, &[0, 1])).unwrap_err().to_string();
        assert!(err.contains("ranks 0 and 2 both map to GPU 0") && err.contains("--comm socket"), "{err}");
        // CPU worlds ignore the map's duplicates (the ordinal is only reported).
        assert_eq!(device_ordinals(&spec(2, DeviceKind::Cpu, CommBackend::Auto, &[0])).unwrap(), vec![0, 0]);
    }

    #[test]
    fn exit_statuses_are_described() {
        let code = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(describe_status(code), "exit code 3");
        let killed = Command::new("sh").args(["-c", "kill -9 $$"]).status().unwrap();
        assert_eq!(describe_status(killed), "signal 9 (SIGKILL)");
    }
}
