//! The engine threads, so the UI thread never blocks: the *run* thread owns the worker world
//! (`Supervisor`) and runs jobs; the *helper* thread does the short slow things (model inspection,
//! device detection, presets, saving video) so they stay responsive while a job runs.
//!
//! ```text
//!  UI thread                         run thread / helper thread         tessera-worker × N
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

use tessera_engine::planner::predict::RankPrediction;
use tessera_engine::planner::preset::Preset;

use super::model_info::{self, ModelInfo};
use super::runner::{self, RunRequest, World};
use super::state::Settings;

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
    /// Save `video`: `.mp4`, `.safetensors` or a folder (PNG frames).
    Save(PathBuf, Video),
    /// List the presets (answered with [`EngineEvent::Presets`]).
    LoadPresets,
    /// Save the settings' plan and size as the user preset `name`, then list the presets again.
    SavePreset(String, Box<Settings>),
    /// Predict each rank's peak for a request (answered with [`EngineEvent::Prediction`]).
    Predict(Box<RunRequest>),
    Shutdown,
}

impl Command {
    /// Jobs go to the run thread; everything else to the helper thread.
    fn for_run_thread(&self) -> bool {
        matches!(self, Self::Run(_) | Self::Cancel)
    }
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
    RunShape {
        height: usize,
        width: usize,
    },
    Job(JobEvent),
    Video(Video),
    Finished(Box<RunReport>),
    /// The run failed before or while running; the text names the rank and a fix.
    Failed(String),
    Cancelled,
    Saved(PathBuf),
    SaveFailed(String),
    /// The presets found, and unreadable preset files as messages.
    Presets(Vec<Preset>, Vec<String>),
    /// The planner's per-rank prediction for a request (the request is echoed to match it).
    Prediction(Box<RunRequest>, Result<Vec<RankPrediction>, String>),
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
    run_commands: Sender<Command>,
    helper_commands: Sender<Command>,
    events: Receiver<EngineEvent>,
    cancel: Arc<CancelSlot>,
    threads: Vec<JoinHandle<()>>,
}

/// Engine → UI queue length; generous, since the UI drains it every frame.
const EVENT_CAPACITY: usize = 4096;

impl EngineHandle {
    /// Starts the engine thread. `repaint` is called after every event (egui's `request_repaint`).
    pub fn spawn(options: EngineOptions, repaint: impl Fn() + Send + Sync + 'static) -> std::io::Result<Self> {
        // Commands are few and come from the UI thread only; they never pile up.
        let (run_commands, run_rx) = unbounded();
        let (helper_commands, helper_rx) = unbounded();
        let (event_tx, events) = bounded(EVENT_CAPACITY);
        let cancel = Arc::new(CancelSlot::default());
        let repaint: Arc<dyn Fn() + Send + Sync> = Arc::new(repaint);
        let emitter = |tx: &Sender<EngineEvent>| {
            let repaint = repaint.clone();
            Emitter { tx: tx.clone(), repaint: Box::new(move || repaint()) }
        };
        let (run_out, helper_out) = (emitter(&event_tx), emitter(&event_tx));
        let (slot, helper_options) = (cancel.clone(), options.clone());
        let run = std::thread::Builder::new()
            .name("tessera-engine-run".into())
            .spawn(move || run_loop(options, run_rx, run_out, slot))?;
        let helper = std::thread::Builder::new()
            .name("tessera-engine-helper".into())
            .spawn(move || helper_loop(helper_options, helper_rx, helper_out))?;
        Ok(Self { run_commands, helper_commands, events, cancel, threads: vec![run, helper] })
    }

    pub fn send(&self, command: Command) {
        if matches!(command, Command::Cancel) {
            self.cancel.request();
        }
        // A closed channel means that thread is gone; its last event said why.
        if command.for_run_thread() {
            self.run_commands.send(command).ok();
        } else {
            self.helper_commands.send(command).ok();
        }
    }

    pub fn try_recv(&self) -> Option<EngineEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.cancel.request();
        self.run_commands.send(Command::Shutdown).ok();
        self.helper_commands.send(Command::Shutdown).ok();
        for t in self.threads.drain(..) {
            // The run thread stops the workers (a grace period, then SIGKILL) before the app exits.
            t.join().ok();
        }
    }
}

fn run_loop(options: EngineOptions, commands: Receiver<Command>, out: Emitter, cancel: Arc<CancelSlot>) {
    let data_dir = options.data_dir.clone().or_else(super::demo::data_dir);
    let mut world: Option<World> = None;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Run(request) => {
                cancel.reset();
                let ctx = runner::RunContext {
                    worker_exe: options.worker_exe.as_deref(),
                    data_dir: data_dir.as_deref(),
                    cancel: &cancel,
                    out: &out,
                };
                runner::run(&mut world, &request, &ctx);
                cancel.reset();
            }
            Command::Shutdown => break,
            // Cancel acts through the cancel slot; the rest is the helper's.
            _ => {}
        }
    }
    if let Some(w) = world.take() {
        w.supervisor.shutdown();
    }
}

fn helper_loop(options: EngineOptions, commands: Receiver<Command>, out: Emitter) {
    let data_dir = options.data_dir.clone().or_else(super::demo::data_dir);
    let preset_folders = super::presets::folders(data_dir.as_deref());
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
            Command::Save(path, video) => match runner::save(&path, &video) {
                Ok(()) => out.emit(EngineEvent::Saved(path)),
                Err(e) => out.emit(EngineEvent::SaveFailed(e)),
            },
            Command::LoadPresets => {
                let (presets, errors) = super::presets::load_all(&preset_folders);
                out.emit(EngineEvent::Presets(presets, errors));
            }
            Command::SavePreset(name, settings) => {
                let saved = match &data_dir {
                    Some(dir) => super::presets::save(&dir.join("presets"), &name, &settings),
                    None => Err("no data folder to save presets in: set $TESSERA_DATA_DIR or $HOME".into()),
                };
                let (presets, mut errors) = super::presets::load_all(&preset_folders);
                match saved {
                    Ok(path) => out.emit(EngineEvent::Saved(path)),
                    Err(e) => errors.push(format!("Save preset: {e}")),
                }
                out.emit(EngineEvent::Presets(presets, errors));
            }
            Command::Predict(request) => {
                let prediction = runner::predict(&request, data_dir.as_deref());
                out.emit(EngineEvent::Prediction(request, prediction));
            }
            Command::Shutdown => break,
            Command::Run(_) | Command::Cancel => {}
        }
    }
}
