//! `StudioApp`: the studio's state and its logic. `logic` drains engine events into the plain state
//! (`state.rs`); drawing lives in `frame.rs` (the panels, which only draw and queue [`Command`]s;
//! queued commands go to the engine after the frame). Settings persist through eframe storage.

use std::path::PathBuf;
use std::time::Instant;

use eframe::egui::{self, ColorImage, TextureHandle, TextureOptions};
use tessera_engine::api::devices::DoctorReport;
use tessera_engine::api::planning::{Preset, RankPrediction};
use tessera_engine::api::{DeviceKind, JobEvent, ModelFiles, ModelSpec, RunReport};

use super::browse::{Background, Done, Target};
use super::engine::{Command, EngineEvent, EngineHandle, EngineOptions, ModelChoice, RunRequest, Video};
use super::records::{RunLog, RunRecord};
use super::state::{LiveRun, MemoryPoint, Messages, PhaseBand, PieceView, RunStatus, Settings, Tab, ViewState};

/// The thumbnail "error" while it is being decoded.
pub const LOADING: &str = "loading";

/// eframe storage key of [`Settings`].
pub const SETTINGS_KEY: &str = "tessera.studio.settings";

/// The model folder the settings point at, and what the engine found there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelStatus {
    pub path: PathBuf,
    /// Component files, config and LoRAs the model was inspected with.
    pub files: ModelFiles,
    /// `None` while the engine is looking.
    pub info: Option<Result<ModelSpec, String>>,
}

/// GPU textures for the mosaic pieces and result frames (rebuilt from the state when missing).
#[derive(Default)]
pub struct Textures {
    /// Index = `LiveRun::pieces` index.
    pub pieces: Vec<Option<TextureHandle>>,
    /// Index = frame.
    pub frames: Vec<Option<TextureHandle>>,
    /// The latest denoise preview, with the `LiveRun::denoise_previews` count it was made from.
    pub denoise: Option<(usize, TextureHandle)>,
}

pub struct StudioApp {
    pub settings: Settings,
    pub live: LiveRun,
    pub messages: Messages,
    pub runs: RunLog,
    pub view: ViewState,
    pub devices: Option<DoctorReport>,
    pub model: ModelStatus,
    pub video: Option<Video>,
    pub textures: Textures,
    /// Commands queued by the panels this frame.
    pub outbox: Vec<Command>,
    /// File pickers and thumbnail decoding off the UI thread.
    pub background: Background,
    /// The input image's thumbnail (or why it could not be read), for the path it was made from.
    pub thumbnail: Option<(PathBuf, Result<TextureHandle, String>)>,
    /// Presets from `presets/` and the user's data dir.
    pub presets: Vec<Preset>,
    /// The planner's per-rank prediction for the request the settings describe, once computed.
    pub prediction: Option<Result<Vec<RankPrediction>, String>>,
    /// The request last sent for prediction (a changed form asks again).
    predicted_for: Option<RunRequest>,
    /// The request of the run in progress (recorded when it finishes).
    current: Option<RunRequest>,
    run_started: Option<Instant>,
    data_dir: Option<PathBuf>,
    engine: EngineHandle,
}

impl StudioApp {
    /// The app as `tessera` opens it: settings from eframe storage, engine with default options.
    pub fn new(cc: &eframe::CreationContext<'_>) -> std::io::Result<Self> {
        let settings = cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY)).unwrap_or_default();
        Self::with_options(&cc.egui_ctx, settings, EngineOptions::default())
    }

    /// The app with explicit settings and engine options (tests use temporary data dirs).
    pub fn with_options(ctx: &egui::Context, settings: Settings, options: EngineOptions) -> std::io::Result<Self> {
        let data_dir = options.data_dir.clone().or_else(super::demo::data_dir);
        let mut messages = Messages::default();
        let runs = match &data_dir {
            Some(dir) => RunLog::load(&dir.join("runs.json")).unwrap_or_else(|e| {
                messages.error(e);
                RunLog::in_memory()
            }),
            None => RunLog::in_memory(),
        };
        let repaint_ctx = ctx.clone();
        let engine = EngineHandle::spawn(options, move || repaint_ctx.request_repaint())?;
        engine.send(Command::LoadPresets);
        Ok(Self {
            settings,
            live: LiveRun::default(),
            messages,
            runs,
            view: ViewState { inspector_zoom: 4.0, ..ViewState::default() },
            devices: None,
            model: ModelStatus::default(),
            video: None,
            textures: Textures::default(),
            outbox: Vec::new(),
            background: Background::default(),
            thumbnail: None,
            presets: Vec::new(),
            prediction: None,
            predicted_for: None,
            current: None,
            run_started: None,
            data_dir,
            engine,
        })
    }

    /// The component files and LoRAs of the settings (none for the demo).
    pub fn model_files(&self) -> ModelFiles {
        if self.settings.use_demo {
            ModelFiles::default()
        } else {
            self.settings.files.clone()
        }
    }

    /// The folder the current settings use (the demo's is the repository's `assets/demo`).
    pub fn model_path(&self) -> PathBuf {
        if self.settings.use_demo {
            super::demo::folder().unwrap_or_default()
        } else {
            PathBuf::from(self.settings.model_dir.trim())
        }
    }

    /// The device kind runs use: CUDA when the worker build and the driver both see GPUs.
    pub fn device_kind(&self) -> DeviceKind {
        match &self.devices {
            Some(d) if !self.settings.use_demo => {
                let gpus = d.worker.probe.as_ref().is_some_and(|p| p.cuda_built && !p.cuda_devices.is_empty());
                if gpus {
                    DeviceKind::Cuda
                } else {
                    DeviceKind::Cpu
                }
            }
            _ => DeviceKind::Cpu,
        }
    }

    /// Drains engine events into the state and creates textures for new pieces. Never blocks.
    pub fn logic(&mut self, ctx: &egui::Context) {
        let (path, files) = (self.model_path(), self.model_files());
        if path != self.model.path || files != self.model.files {
            self.model = ModelStatus { path: path.clone(), files: files.clone(), info: None };
            self.engine.send(Command::Inspect(path, files));
        }
        while let Some(event) = self.engine.try_recv() {
            self.on_event(event);
        }
        self.background_logic(ctx);
        let request = self.request();
        if self.predicted_for.as_ref() != Some(&request) {
            self.predicted_for = Some(request.clone());
            // A prediction for another request is stale: show none until this one's arrives.
            self.prediction = None;
            self.engine.send(Command::Predict(Box::new(request)));
        }
        self.make_textures(ctx);
        if self.live.status.is_busy() {
            // Elapsed time and ETA move even between events.
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
    }

    /// Sends what the panels queued this frame to the engine.
    pub fn flush_commands(&mut self) {
        for command in std::mem::take(&mut self.outbox) {
            self.engine.send(command);
        }
    }

    /// Checks the settings and starts a run (or explains why not).
    pub fn generate(&mut self) {
        if self.live.status.is_busy() {
            return;
        }
        let request = self.request();
        // With a known model, refuse bad requests here, with the engine's own check (which the
        // engine runs again).
        match &self.model.info {
            Some(Ok(spec)) => {
                if let Err(e) = request.to_generation(&self.model.path, spec).validate(spec) {
                    self.messages.error(e.to_string());
                    return;
                }
            }
            Some(Err(e)) if !self.settings.use_demo => {
                self.messages.error(format!("Model: {e}"));
                return;
            }
            _ => {}
        }
        self.live = LiveRun { status: RunStatus::Preparing("starting".into()), ..LiveRun::default() };
        self.textures.pieces.clear();
        self.textures.denoise = None;
        self.view.inspected_piece = None;
        self.view.mosaic_chunk = None;
        self.current = Some(request.clone());
        self.run_started = Some(Instant::now());
        self.outbox.push(Command::Run(Box::new(request)));
    }

    /// The request the settings describe.
    pub fn request(&self) -> RunRequest {
        let model = if self.settings.use_demo { ModelChoice::Demo } else { ModelChoice::Folder(self.model_path()) };
        let params = self.settings.params();
        let image = Some(PathBuf::from(self.settings.image.trim())).filter(|p| !p.as_os_str().is_empty());
        RunRequest {
            model,
            prompt: self.settings.prompt.clone(),
            negative_prompt: self.settings.negative_prompt.clone(),
            image,
            params,
            plan: self.settings.plan,
            device: self.device_kind(),
            files: self.model_files(),
        }
    }

    pub fn cancel(&mut self) {
        if self.live.status.is_busy() {
            self.outbox.push(Command::Cancel);
        }
    }

    fn on_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Devices(report) => self.devices = Some(*report),
            EngineEvent::Model(path, files, info) => {
                if path == self.model.path && files == self.model.files {
                    self.model.info = Some(*info);
                }
            }
            EngineEvent::Preparing(what) => self.live.status = RunStatus::Preparing(what),
            EngineEvent::RunShape { height, width } => self.live.output_hw = (height, width),
            EngineEvent::Job(event) => self.on_job_event(event),
            EngineEvent::Video(video) => {
                self.view.frame = 0;
                self.textures.frames = vec![None; video.frames.rgb.len()];
                self.video = Some(video);
            }
            EngineEvent::Finished(report) => {
                self.live.status = RunStatus::Finished { wall_seconds: report.wall_seconds };
                if let Some(request) = self.current.take() {
                    self.record(request, *report);
                }
            }
            EngineEvent::Failed(text) => {
                self.live.status = RunStatus::Failed(text.clone());
                self.current = None;
                self.messages.error(text);
            }
            EngineEvent::WorkersLost(text) => self.messages.error(text),
            EngineEvent::Cancelled => {
                self.live.status = RunStatus::Cancelled;
                self.current = None;
                self.messages.info("Run cancelled; the workers are still up for the next run.");
            }
            EngineEvent::Saved(path) => self.messages.info(format!("Saved {}", path.display())),
            EngineEvent::SaveFailed(text) => self.messages.error(format!("Save failed: {text}")),
            EngineEvent::Presets(presets, errors) => {
                self.presets = presets;
                for e in errors {
                    self.messages.error(e);
                }
            }
            EngineEvent::Prediction(request, prediction) => {
                if self.predicted_for.as_ref() == Some(&*request) {
                    self.prediction = Some(prediction);
                }
            }
        }
    }

    fn on_job_event(&mut self, event: JobEvent) {
        let now = self.run_started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        let live = &mut self.live;
        match event {
            JobEvent::Started { world_size } => {
                live.status = RunStatus::Running;
                live.world_size = world_size;
            }
            JobEvent::Progress { step, total, message, .. } => {
                let p = &mut live.progress;
                if p.message != message || step < p.step {
                    p.history.clear();
                }
                p.message = message;
                p.step = step;
                p.total = total;
                p.history.push((now, step));
            }
            JobEvent::Memory { rank, elapsed_secs, used_bytes, peak_bytes, rss_bytes, device_total_bytes, .. } => {
                let trace = live.rank_mut(rank);
                trace.device_total_bytes = device_total_bytes;
                trace.memory.push(MemoryPoint { elapsed_secs, used_bytes, peak_bytes, rss_bytes });
            }
            JobEvent::PhaseSpan { rank, name, start_secs, seconds, peak_bytes, .. } => {
                live.rank_mut(rank).phases.push(PhaseBand { name, start_secs, seconds, peak_bytes });
            }
            JobEvent::Log { rank, message, .. } => live.log.push(format!("[rank {rank}] {message}")),
            JobEvent::VaePiece { rank, piece } => {
                let rank_memory = live.rank_mut(rank).memory.last().copied();
                let arrival = live.pieces.len() + 1;
                live.pieces.push(PieceView { rank, arrival, piece, rank_memory });
            }
            JobEvent::DenoisePreview { preview, .. } => {
                live.denoise_preview = Some(preview);
                live.denoise_previews += 1;
            }
            JobEvent::Stage { message } => live.status = RunStatus::Preparing(message),
            // The engine's own Finished/Failed/Cancelled events carry the outcome.
            JobEvent::Finished { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled => {}
        }
    }

    fn record(&mut self, request: RunRequest, report: RunReport) {
        let model = match &request.model {
            ModelChoice::Demo => "demo".to_string(),
            ModelChoice::Folder(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let record = RunRecord {
            id: self.runs.next_id(),
            finished_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            job: "generate".into(),
            preset: self.settings.preset.clone(),
            model,
            width: request.params.width,
            height: request.params.height,
            frames: request.params.frames,
            plan: request.plan,
            report,
        };
        if let Err(e) = self.runs.add(record) {
            self.messages.error(e);
        }
    }

    /// Picked paths and loaded settings into the form; thumbnails for a changed input image.
    fn background_logic(&mut self, ctx: &egui::Context) {
        while let Some(done) = self.background.try_recv() {
            match done {
                Done::Picked(target, path) => {
                    let text = path.display().to_string();
                    match target {
                        Target::ModelFolder => {
                            self.settings.model_dir = text;
                            self.settings.use_demo = false;
                        }
                        Target::Image => self.settings.image = text,
                        Target::Output => self.settings.output = text,
                        // Answered with `Done::Settings`.
                        Target::SettingsFile => {}
                        Target::File(slot) => {
                            super::panels::model_files::apply_pick(&mut self.settings.files, slot, path)
                        }
                    }
                }
                Done::Settings(path, Ok(from)) => {
                    let demo = super::demo::folder().ok();
                    let notes = super::load_settings::apply(&from, &mut self.settings, demo.as_deref());
                    self.messages.info(format!("Loaded the settings of {}", path.display()));
                    for note in notes {
                        self.messages.info(format!("Note: {note}"));
                    }
                }
                // The error names the file.
                Done::Settings(_, Err(e)) => self.messages.error(e),
                Done::Thumbnail(path, result) => {
                    if path.as_os_str() == self.settings.image.trim() {
                        let texture = result.map(|img| ctx.load_texture("input-image", img, TextureOptions::LINEAR));
                        self.thumbnail = Some((path, texture));
                    }
                }
            }
        }
        let image = PathBuf::from(self.settings.image.trim());
        let shown = self.thumbnail.as_ref().map(|(p, _)| p.clone());
        if image.as_os_str().is_empty() {
            self.thumbnail = None;
        } else if shown.as_ref() != Some(&image) && image.is_file() {
            // Mark as requested (with no texture yet) so it is decoded once.
            self.thumbnail = Some((image.clone(), Err(LOADING.into())));
            self.background.thumbnail(image, ctx);
        }
    }

    fn make_textures(&mut self, ctx: &egui::Context) {
        let count = self.live.denoise_previews;
        if let Some(p) = &self.live.denoise_preview {
            let (w, h) = (p.preview.width as usize, p.preview.height as usize);
            let stale = self.textures.denoise.as_ref().is_none_or(|(n, _)| *n != count);
            if stale && w > 0 && h > 0 && p.preview.rgb.len() == w * h * 3 {
                let image = ColorImage::from_rgb([w, h], &p.preview.rgb);
                self.textures.denoise =
                    Some((count, ctx.load_texture("denoise-preview", image, TextureOptions::LINEAR)));
            }
        }
        let pieces = &self.live.pieces;
        self.textures.pieces.resize(pieces.len(), None);
        for (view, slot) in pieces.iter().zip(&mut self.textures.pieces) {
            if slot.is_none() {
                let p = &view.piece.preview;
                let (w, h) = (p.width as usize, p.height as usize);
                // A malformed preview is skipped (the piece is still outlined and inspectable).
                if w > 0 && h > 0 && p.rgb.len() == w * h * 3 {
                    let image = ColorImage::from_rgb([w, h], &p.rgb);
                    *slot = Some(ctx.load_texture(format!("piece-{}", view.arrival), image, TextureOptions::NEAREST));
                }
            }
        }
    }

    /// The texture of result frame `i`, created on first use.
    pub fn frame_texture(&mut self, ctx: &egui::Context, i: usize) -> Option<TextureHandle> {
        let video = self.video.as_ref()?;
        let rgb = video.frames.rgb.get(i)?;
        let slot = self.textures.frames.get_mut(i)?;
        if slot.is_none() {
            let (w, h) = (video.frames.width, video.frames.height);
            let image = ColorImage::from_rgb([w, h], rgb);
            // Scaled up, a frame shows its pixels as they are (not blurred); scaled down, smoothly.
            let options = TextureOptions { magnification: egui::TextureFilter::Nearest, ..TextureOptions::LINEAR };
            *slot = Some(ctx.load_texture(format!("frame-{i}"), image, options));
        }
        slot.clone()
    }

    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }
}

impl Tab {
    pub fn label(self) -> &'static str {
        match self {
            Tab::Live => "Live",
            Tab::Result => "Result",
            Tab::Compare => "Compare",
        }
    }
}
