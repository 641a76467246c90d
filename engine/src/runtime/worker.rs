//! `tessera-worker`'s main: guard against orphaning, connect to the supervisor, say hello, form the
//! data plane, then serve `ToWorker` messages. Jobs run on their own thread so `Cancel` and
//! `Shutdown` are handled while a job runs; a panic in a job is caught and reported as `Failed`.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;
use clap::Parser;

use super::jobs::{self, EmitFn, JobCtx, JobError};
use super::launch::{CommBackend, WorkerArgs};
use super::protocol::{read_msg, write_msg, DeviceInfo, DeviceKind, FromWorker, JobId, ToWorker, PROTOCOL_VERSION};
use super::telemetry::{Sampler, Telemetry, SAMPLE_PERIOD};
use crate::parallel::comm::{Collective, SocketListener, SocketOptions};
use crate::parallel::Topology;

/// Exit code when the worker cannot start (bad arguments, no supervisor, device unavailable).
const EXIT_SETUP_FAILED: u8 = 2;

/// Entry point of the `tessera-worker` binary.
pub fn main_from_args() -> ExitCode {
    let args = WorkerArgs::parse();
    if args.doctor {
        let report = super::doctor::worker_probe();
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    init_logging();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            tracing::error!("{msg}");
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

/// Plain lines on stderr, level first: the supervisor re-logs them with `[rank N]` and that level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
}

/// Die with the parent: the kernel sends SIGKILL when the thread that spawned us exits.
fn guard_against_orphaning(parent_pid: Option<u32>) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    // The parent may have died between fork and prctl; then we were re-parented already.
    if let Some(expected) = parent_pid {
        let actual = nix::unistd::getppid().as_raw() as u32;
        if actual != expected {
            return Err(format!("supervisor (pid {expected}) is gone; parent is now pid {actual}"));
        }
    }
    Ok(())
}

fn open_device(kind: DeviceKind, ordinal: usize) -> Result<(Device, DeviceInfo), String> {
    match kind {
        DeviceKind::Cpu => {
            let mem = sysinfo::System::new()
                .map(|mut s| {
                    s.refresh_memory();
                    s.total_memory()
                })
                .unwrap_or(0);
            Ok((Device::Cpu, DeviceInfo { kind, ordinal, name: "cpu".into(), mem_total_bytes: mem }))
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let device = Device::new_cuda(ordinal)
                .map_err(|e| format!("cannot open cuda:{ordinal} ({e}); check CUDA_VISIBLE_DEVICES and the driver"))?;
            let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(|e| format!("cuda:{ordinal}: {e}"))?;
            let name = ctx.name().unwrap_or_else(|_| format!("cuda:{ordinal}"));
            let total = ctx.mem_get_info().map(|(_, t)| t as u64).unwrap_or(0);
            Ok((device, DeviceInfo { kind, ordinal, name, mem_total_bytes: total }))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err("this tessera-worker was built without the `cuda` feature; \
                                 rebuild with `--features cuda` or use --device cpu"
            .into()),
    }
}

/// Shared, serialised writes to the control socket (job thread, telemetry thread, control loop).
#[derive(Clone)]
struct ControlWriter(Arc<Mutex<UnixStream>>);

impl ControlWriter {
    fn send(&self, msg: &FromWorker) {
        let result = match self.0.lock() {
            Ok(mut stream) => write_msg(&mut *stream, msg),
            Err(_) => return,
        };
        if let Err(e) = result {
            // The supervisor is gone; the control loop will notice and exit.
            tracing::debug!("control write failed: {e}");
        }
    }
}

/// The data plane, prepared before `Hello`: the socket is bound (every world forms the host mesh;
/// NCCL uses it for point-to-point and sub-groups) and, for NCCL, rank 0 made the unique id.
struct PendingComm {
    listener: SocketListener,
    #[cfg(feature = "cuda")]
    nccl: Option<Option<cudarc::nccl::safe::Id>>,
}

fn prepare_comm(args: &WorkerArgs, dir: &Path) -> Result<(PendingComm, Option<Vec<u8>>), String> {
    let listener = SocketListener::bind(dir, args.rank(), args.world_size).map_err(|e| e.to_string())?;
    match args.comm.resolve(args.device) {
        #[cfg(feature = "cuda")]
        CommBackend::Nccl => {
            let id = if args.rank == 0 {
                Some(cudarc::nccl::safe::Id::new().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?)
            } else {
                None
            };
            let bytes = id.as_ref().map(crate::parallel::comm::nccl::id_to_bytes);
            Ok((PendingComm { listener, nccl: Some(id) }, bytes))
        }
        #[cfg(not(feature = "cuda"))]
        CommBackend::Nccl => Err("the NCCL backend needs a worker built with `--features cuda`".into()),
        _ => Ok((
            PendingComm {
                listener,
                #[cfg(feature = "cuda")]
                nccl: None,
            },
            None,
        )),
    }
}

fn form_comm(
    pending: PendingComm,
    args: &WorkerArgs,
    device: &Device,
    nccl_id: Option<Vec<u8>>,
) -> Result<Arc<dyn Collective>, String> {
    let opts = SocketOptions {
        connect_timeout: Duration::from_millis(args.handshake_timeout_ms),
        io_timeout: Duration::from_millis(args.comm_timeout_ms),
    };
    let mesh = pending.listener.connect_mesh(&opts).map_err(|e| e.to_string())?.with_device(device.clone());
    #[cfg(feature = "cuda")]
    if let Some(own_id) = pending.nccl {
        use crate::parallel::comm::nccl::{id_from_bytes, NcclComm};
        let id = match own_id {
            Some(id) => id,
            None => {
                id_from_bytes(nccl_id.as_deref().ok_or("the supervisor sent no NCCL id")?).map_err(|e| e.to_string())?
            }
        };
        let timeout = Duration::from_millis(args.comm_timeout_ms);
        let comm = NcclComm::new(device, args.rank, args.world_size, id, Arc::new(mesh), timeout)
            .map_err(|e| e.to_string())?;
        return Ok(Arc::new(comm));
    }
    let _ = nccl_id;
    Ok(Arc::new(mesh))
}

fn run(args: &WorkerArgs) -> Result<(), String> {
    guard_against_orphaning(args.parent_pid)?;
    let dir = args.rendezvous.as_deref().ok_or("--rendezvous is required (the worker is started by the engine)")?;
    if let Some(ms) = args.debug_connect_delay_ms {
        tracing::warn!("debug: delaying connection by {ms} ms");
        std::thread::sleep(Duration::from_millis(ms));
    }
    let (device, device_info) = open_device(args.device, args.device_ordinal)?;
    let (pending, nccl_id) = prepare_comm(args, dir)?;

    let mut control = UnixStream::connect(dir.join("control.sock"))
        .map_err(|e| format!("cannot connect to the supervisor ({e}): {}", dir.display()))?;
    let hello = FromWorker::Hello {
        rank: args.rank(),
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        device: device_info,
        nccl_id,
    };
    write_msg(&mut control, &hello).map_err(|e| format!("sending hello: {e}"))?;
    // The supervisor enforces the handshake deadline (and names the missing rank); wait longer than
    // it, so that a slow peer is reported as missing rather than this rank as failed.
    let init_wait = Duration::from_millis(args.handshake_timeout_ms.saturating_mul(2)) + Duration::from_secs(5);
    control.set_read_timeout(Some(init_wait)).map_err(|e| e.to_string())?;
    let init = read_msg::<ToWorker>(&mut control).map_err(|e| format!("waiting for init: {e}"))?;
    if init == ToWorker::Shutdown {
        // The handshake failed elsewhere (e.g. another rank never arrived).
        tracing::info!("shut down during the handshake");
        return Ok(());
    }
    let ToWorker::Init { protocol_version, world_size, nccl_id } = init else {
        return Err(format!("expected init, got {init:?}"));
    };
    if protocol_version != PROTOCOL_VERSION || world_size != args.world_size {
        return Err(format!("init mismatch: protocol {protocol_version}, world size {world_size}"));
    }
    let comm = match form_comm(pending, args, &device, nccl_id) {
        Ok(comm) => comm,
        Err(message) => {
            let _ = write_msg(&mut control, &FromWorker::Failed { job_id: None, message: message.clone() });
            return Err(message);
        }
    };
    control.set_read_timeout(None).map_err(|e| e.to_string())?;
    write_msg(&mut control, &FromWorker::Ready { rank: args.rank() }).map_err(|e| format!("sending ready: {e}"))?;
    tracing::info!("rank {} of {} ready on {}", args.rank, args.world_size, args.device);

    let topology = Topology { rank: args.rank(), world_size: args.world_size, device_ordinal: args.device_ordinal };
    serve(control, topology, device, comm, Sampler::new(args.device, args.device_ordinal))
}

struct RunningJob {
    job_id: JobId,
    cancel: Arc<AtomicBool>,
    replied: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn serve(
    mut control: UnixStream,
    topology: Topology,
    device: Device,
    comm: Arc<dyn Collective>,
    sampler: Sampler,
) -> Result<(), String> {
    let writer = ControlWriter(Arc::new(Mutex::new(control.try_clone().map_err(|e| e.to_string())?)));
    let telemetry = Arc::new(Telemetry::new(sampler));
    spawn_telemetry(telemetry.clone(), writer.clone()).map_err(|e| format!("telemetry thread: {e}"))?;
    let mut running: Option<RunningJob> = None;
    loop {
        let msg = match read_msg::<ToWorker>(&mut control) {
            Ok(msg) => msg,
            Err(e) => {
                // Supervisor gone: nothing left to do (and nobody to tell).
                tracing::info!("control connection ended ({e}); exiting");
                return Ok(());
            }
        };
        match msg {
            ToWorker::Run { job_id, job } => {
                // `replied` is set just before the terminal reply, so the next `Run` may arrive while
                // the previous thread is still returning: join it then instead of refusing.
                if running.as_ref().is_some_and(|r| !r.replied.load(std::sync::atomic::Ordering::SeqCst)) {
                    writer.send(&FromWorker::Failed {
                        job_id: Some(job_id),
                        message: "busy: a job is still running on this rank".into(),
                    });
                    continue;
                }
                if let Some(previous) = running.take() {
                    let _ = previous.thread.join();
                }
                let cancel = Arc::new(AtomicBool::new(false));
                let replied = Arc::new(AtomicBool::new(false));
                let ctx = JobCtx::new(topology, device.clone(), comm.clone(), cancel.clone(), telemetry.clone(), {
                    let writer = writer.clone();
                    let emit: EmitFn = Arc::new(move |event| writer.send(&FromWorker::Event { job_id, event }));
                    emit
                });
                let (writer, telemetry, done) = (writer.clone(), telemetry.clone(), replied.clone());
                let thread = std::thread::Builder::new()
                    .name(format!("job-{}", job_id.0))
                    .spawn(move || run_job_thread(ctx, job_id, job, &writer, &telemetry, &done))
                    .map_err(|e| format!("job thread: {e}"))?;
                running = Some(RunningJob { job_id, cancel, replied, thread });
            }
            ToWorker::Cancel { job_id } => {
                if let Some(r) = running.as_ref().filter(|r| r.job_id == job_id) {
                    r.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            ToWorker::Shutdown => {
                tracing::debug!("shutdown requested");
                if running.as_ref().is_some_and(|r| !r.replied.load(std::sync::atomic::Ordering::SeqCst)) {
                    // The world is stopping under a running job (a peer failed): make its pending
                    // collectives fail now instead of spinning until SIGKILL (NCCL: ncclCommAbort).
                    comm.abort();
                }
                return Ok(());
            }
            ToWorker::Init { .. } => tracing::warn!("ignoring a second init"),
        }
    }
}

fn run_job_thread(
    ctx: JobCtx,
    job_id: JobId,
    job: super::protocol::Job,
    writer: &ControlWriter,
    telemetry: &Telemetry,
    replied: &AtomicBool,
) {
    telemetry.start_job(job_id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| jobs::run(&ctx, &job)));
    let summary = telemetry.finish_job();
    let reply = match result {
        Ok(Ok(output)) => FromWorker::Done { job_id, output, summary },
        Ok(Err(JobError::Cancelled)) => FromWorker::Cancelled { job_id },
        Ok(Err(e)) => FromWorker::Failed { job_id: Some(job_id), message: e.to_string() },
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown payload".into());
            FromWorker::Failed { job_id: Some(job_id), message: format!("panicked: {what}") }
        }
    };
    drop(ctx);
    replied.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.send(&reply);
}

fn spawn_telemetry(telemetry: Arc<Telemetry>, writer: ControlWriter) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("telemetry".into()).spawn(move || loop {
        std::thread::sleep(SAMPLE_PERIOD);
        if let Some((job_id, sample)) = telemetry.sample() {
            writer.send(&FromWorker::Event { job_id, event: super::protocol::WorkerEvent::Memory(sample) });
        }
    })
}
