//! The engine side of the studio, on two threads so the UI thread never blocks: the *run* thread
//! owns the engine's [`Session`] (the worker world, reused between runs) and runs generations; the
//! *helper* thread does the short slow things (model inspection, device probing, predictions,
//! presets, saving) so they stay responsive while a run goes on.
//!
//! ```text
//!  UI thread                         run thread / helper thread          tessera-worker × N
//!  panels → Command ──(crossbeam)──▶ Session::generate / helper work ──▶
//!  logic(): drain   ◀──(bounded)──── EngineEvent + request_repaint  ◀── JobEvents
//! ```
//! - [`messages`]: [`Command`], [`EngineEvent`] and the data they carry.
//! - `emitter.rs`: the event queue's sending end; `run.rs`: one run; `helper.rs`: the helper's work.
//!
//! Cancel never waits in the command queue behind the running job: [`EngineHandle::send`] hands
//! it straight to the session's [`SessionCancel`]. While idle, the run thread checks every second
//! whether a worker died, so the user hears of it when it happens (not at the next Generate).

mod emitter;
mod helper;
pub mod messages;
mod run;

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use tessera_engine::api::{ModelSpec, Session, SessionCancel, SessionOptions};

use emitter::Emitter;
pub use messages::{Command, EngineEvent, EngineOptions, ModelChoice, RunRequest, Video};

/// The UI's end of the engine.
pub struct EngineHandle {
    run_commands: Sender<Command>,
    helper_commands: Sender<Command>,
    events: Receiver<EngineEvent>,
    cancel: SessionCancel,
    threads: Vec<JoinHandle<()>>,
}

/// Engine → UI queue length; generous, since the UI drains it every frame.
const EVENT_CAPACITY: usize = 4096;
/// How often the idle run thread looks for workers that died.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl EngineHandle {
    /// Starts the engine threads. `repaint` is called after every event (egui's `request_repaint`).
    pub fn spawn(options: EngineOptions, repaint: impl Fn() + Send + Sync + 'static) -> std::io::Result<Self> {
        // Commands are few and come from the UI thread only; they never pile up.
        let (run_commands, run_rx) = unbounded();
        let (helper_commands, helper_rx) = unbounded();
        let (event_tx, events) = bounded(EVENT_CAPACITY);
        let repaint: std::sync::Arc<dyn Fn() + Send + Sync> = std::sync::Arc::new(repaint);
        let emitter = |tx: &Sender<EngineEvent>| {
            let repaint = repaint.clone();
            Emitter { tx: tx.clone(), repaint: Box::new(move || repaint()) }
        };
        let (run_out, helper_out) = (emitter(&event_tx), emitter(&event_tx));
        let session =
            Session::new(SessionOptions { worker_exe: options.worker_exe.clone(), ..SessionOptions::default() });
        let cancel = session.cancel_handle();
        let run = std::thread::Builder::new()
            .name("tessera-engine-run".into())
            .spawn(move || run_loop(session, run_rx, run_out))?;
        let helper = std::thread::Builder::new()
            .name("tessera-engine-helper".into())
            .spawn(move || helper_loop(options, helper_rx, helper_out))?;
        Ok(Self { run_commands, helper_commands, events, cancel, threads: vec![run, helper] })
    }

    pub fn send(&self, command: Command) {
        // A closed channel means that thread is gone; its last event said why.
        match command {
            Command::Cancel => self.cancel.cancel(),
            Command::Run(_) => {
                self.run_commands.send(command).ok();
            }
            other => {
                self.helper_commands.send(other).ok();
            }
        }
    }

    pub fn try_recv(&self) -> Option<EngineEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.run_commands.send(Command::Shutdown).ok();
        self.helper_commands.send(Command::Shutdown).ok();
        for t in self.threads.drain(..) {
            // The run thread stops the workers (a grace period, then SIGKILL) before the app exits.
            t.join().ok();
        }
    }
}

fn run_loop(mut session: Session, commands: Receiver<Command>, out: Emitter) {
    loop {
        match commands.recv_timeout(IDLE_CHECK) {
            Ok(Command::Run(request)) => run::run(&mut session, &request, &out),
            Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                if let Some(message) = session.check_idle() {
                    out.emit(EngineEvent::WorkersLost(message));
                }
            }
        }
    }
    session.shutdown();
}

fn helper_loop(options: EngineOptions, commands: Receiver<Command>, out: Emitter) {
    let data_dir: Option<PathBuf> = options.data_dir.clone().or_else(crate::studio::demo::data_dir);
    let preset_folders = crate::studio::presets::folders(data_dir.as_deref());
    if !options.skip_device_probe {
        out.emit(EngineEvent::Devices(Box::new(tessera_engine::api::devices::probe(options.worker_exe.as_deref()))));
    }
    while let Ok(command) = commands.recv() {
        match command {
            Command::Inspect(path, files) => {
                let spec = ModelSpec::open(&path, &files).map_err(|e| e.to_string());
                out.emit(EngineEvent::Model(path, files, Box::new(spec)));
            }
            Command::Save(path, video) => match helper::save(&path, &video) {
                Ok(()) => out.emit(EngineEvent::Saved(path)),
                Err(e) => out.emit(EngineEvent::SaveFailed(e)),
            },
            Command::LoadPresets => {
                let (presets, errors) = crate::studio::presets::load_all(&preset_folders);
                out.emit(EngineEvent::Presets(presets, errors));
            }
            Command::SavePreset(name, settings) => {
                let saved = match &data_dir {
                    Some(dir) => crate::studio::presets::save(&dir.join("presets"), &name, &settings),
                    None => Err("no data folder to save presets in: set $TESSERA_DATA_DIR or $HOME".into()),
                };
                let (presets, mut errors) = crate::studio::presets::load_all(&preset_folders);
                match saved {
                    Ok(path) => out.emit(EngineEvent::Saved(path)),
                    Err(e) => errors.push(format!("Save preset: {e}")),
                }
                out.emit(EngineEvent::Presets(presets, errors));
            }
            Command::Predict(request) => {
                let prediction = helper::predict(&request);
                out.emit(EngineEvent::Prediction(request, prediction));
            }
            Command::Shutdown => break,
            Command::Run(_) | Command::Cancel => {}
        }
    }
}
