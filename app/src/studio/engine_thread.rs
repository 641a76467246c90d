//! The engine thread: owns the worker world (`Supervisor`) and everything slow (model inspection,
//! device detection, writing the demo model, saving video), so the UI thread never blocks.
//!
//! ```text
//!  UI thread                         engine thread                      tessera-worker × N
//!  panels → Command ──(crossbeam)──▶ loop { recv Command; … }  ──jobs──▶
//!  logic(): drain   ◀──(bounded)──── EngineEvent + request_repaint ◀─events─
//! ```
//! Cancel cannot wait in the command queue while a job blocks the engine thread, so
//! [`EngineHandle::send`] also flips the running job's [`CancelHandle`] directly (an atomic).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use tessera_engine::media::Frames;
use tessera_engine::runtime::doctor::DoctorReport;
use tessera_engine::runtime::{CancelHandle, JobEvent, RunReport};

use super::model_info::{self, ModelInfo};
use super::runner::{self, RunRequest, World};

/// What the UI asks of the engine.
#[derive(Debug)]
pub enum Command {
    /// Detect GPUs (NVML, the worker's CUDA probe) and the CPU.
    DetectDevices,
    /// Read a model folder's configs (answered with [`EngineEvent::Model`]).
    Inspect(PathBuf),
    Run(Box<RunRequest>),
    /// Stop the running job at the next step boundary (workers stay up).
    Cancel,
    /// Save the last video: `.mp4`, `.safetensors` or a folder (PNG frames).
    Save(PathBuf),
    Shutdown,
}

/// The decoded video of the last run, as RGB8 frames.
#[derive(Clone)]
pub struct Video {
    pub frames: Arc<Frames>,
    pub fps: f64,
}

impl std::fmt::Debug for Video {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Video({} frames {}x{})", self.frames.rgb.len(), self.frames.width, self.frames.height)
    }
}

/// What the engine tells the UI.
#[derive(Debug)]
pub enum EngineEvent {
    Devices(Box<DoctorReport>),
    Model(PathBuf, Result<ModelInfo, String>),
    /// Before the job runs: a step of preparation ("starting 2 workers").
    Preparing(String),
    /// Output size of the run in pixels, known once the request is validated.
    RunShape { height: usize, width: usize },
    Job(JobEvent),
    Video(Video),
    Finished(Box<RunReport>),
    /// The run failed before or while running; the text names the rank and a fix.
    Failed(String),
    Cancelled,
    Saved(PathBuf),
    SaveFailed(String),
}

/// Knobs of the engine (tests point them at temporary folders).
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// `None`: found like the CLI does (`$TESSERA_WORKER_EXE`, else beside this executable).
    pub worker_exe: Option<PathBuf>,
    /// `None`: [`super::demo::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Skip the device probe at start (it runs `tessera-worker --doctor`).
    pub skip_device_probe: bool,
}

/// The running job's cancel handle, reachable from the UI thread.
#[derive(Default)]
pub(crate) struct CancelSlot {
    handle: Mutex<Option<CancelHandle>>,
    requested: AtomicBool,
}

impl CancelSlot {
    pub(crate) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Ok(guard) = self.handle.lock() {
            if let Some(h) = guard.as_ref() {
                h.cancel();
            }
        }
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub(crate) fn arm(&self, handle: Option<CancelHandle>) {
        if let Ok(mut guard) = self.handle.lock() {
            *guard = handle;
        }
    }

    fn reset(&self) {
        self.requested.store(false, Ordering::SeqCst);
        self.arm(None);
    }
}

/// Sends events to the UI and wakes it.
pub(crate) struct Emitter {
    tx: Sender<EngineEvent>,
    repaint: Box<dyn Fn() + Send>,
}

impl Emitter {
    pub(crate) fn emit(&self, event: EngineEvent) {
        // Telemetry is the only flood; when the UI is far behind, drop memory samples rather
        // than stall the job (the chart has ten per second per rank).
        let droppable = matches!(event, EngineEvent::Job(JobEvent::Memory { .. }));
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) if !droppable => {
                self.tx.send(ev).ok();
            }
            Err(_) => {}
        }
        (self.repaint)();
    }
}

/// The UI's end of the engine.
pub struct EngineHandle {
    commands: Sender<Command>,
    events: Receiver<EngineEvent>,
    cancel: Arc<CancelSlot>,
    thread: Option<JoinHandle<()>>,
}

/// Engine → UI queue length; generous, since the UI drains it every frame.
const EVENT_CAPACITY: usize = 4096;

impl EngineHandle {
    /// Starts the engine thread. `repaint` is called after every event (egui's `request_repaint`).
    pub fn spawn(options: EngineOptions, repaint: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        // Commands are few and come from the UI thread only; they never pile up.
        let (commands, command_rx) = unbounded();
        let (event_tx, events) = bounded(EVENT_CAPACITY);
        let cancel = Arc::new(CancelSlot::default());
        let emitter = Emitter { tx: event_tx, repaint: Box::new(repaint) };
        let slot = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-engine".into())
            .spawn(move || engine_loop(options, command_rx, emitter, slot))?;
        Ok(Self { commands, events, cancel, thread: Some(thread) })
    }

    pub fn send(&self, command: Command) {
        if matches!(command, Command::Cancel) {
            self.cancel.request();
        }
        // A closed channel means the engine thread is gone; its last event said why.
        self.commands.send(command).ok();
    }

    pub fn try_recv(&self) -> Option<EngineEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.cancel.request();
        self.commands.send(Command::Shutdown).ok();
        if let Some(t) = self.thread.take() {
            // Stops the workers (a grace period, then SIGKILL) before the app exits.
            t.join().ok();
        }
    }
}

fn engine_loop(options: EngineOptions, commands: Receiver<Command>, out: Emitter, cancel: Arc<CancelSlot>) {
    let data_dir = options.data_dir.clone().or_else(super::demo::data_dir);
    let mut world: Option<World> = None;
    let mut last_video: Option<Video> = None;
    if !options.skip_device_probe {
        out.emit(EngineEvent::Devices(Box::new(tessera_engine::runtime::doctor::probe(options.worker_exe.as_deref()))));
    }
    while let Ok(command) = commands.recv() {
        match command {
            Command::DetectDevices => {
                let report = tessera_engine::runtime::doctor::probe(options.worker_exe.as_deref());
                out.emit(EngineEvent::Devices(Box::new(report)));
            }
            Command::Inspect(path) => {
                let info = model_info::inspect(&path).map_err(|e| e.to_string());
                out.emit(EngineEvent::Model(path, info));
            }
            Command::Run(request) => {
                cancel.reset();
                let ctx = runner::RunContext {
                    worker_exe: options.worker_exe.as_deref(),
                    data_dir: data_dir.as_deref(),
                    cancel: &cancel,
                    out: &out,
                };
                if let Some(video) = runner::run(&mut world, &request, &ctx) {
                    last_video = Some(video);
                }
                cancel.reset();
            }
            Command::Cancel => {}
            Command::Save(path) => match &last_video {
                Some(video) => match runner::save(&path, video) {
                    Ok(()) => out.emit(EngineEvent::Saved(path)),
                    Err(e) => out.emit(EngineEvent::SaveFailed(e)),
                },
                None => out.emit(EngineEvent::SaveFailed("nothing to save yet: run Generate first".into())),
            },
            Command::Shutdown => break,
        }
    }
    if let Some(w) = world.take() {
        w.supervisor.shutdown();
    }
}
