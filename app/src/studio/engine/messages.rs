//! What the UI and the engine threads say to each other: [`Command`] down, [`EngineEvent`] up, and
//! the plain data they carry ([`RunRequest`], [`Video`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_engine::api::devices::DoctorReport;
use tessera_engine::api::planning::{Preset, RankPrediction};
use tessera_engine::api::RunReport;
use tessera_engine::api::{
    DeviceKind, Frames, GenerateParams, GenerationRequest, JobEvent, ModelFiles, ModelSpec, ParallelPlan, Prompt,
};

use crate::studio::state::Settings;

/// What the UI asks of the engine.
#[derive(Debug)]
pub enum Command {
    /// Read a model folder and/or component files (answered with [`EngineEvent::Model`]).
    Inspect(PathBuf, ModelFiles),
    Run(Box<RunRequest>),
    /// Stop the running generation at the next step boundary (the workers stay up). Acts at once
    /// (it never waits behind the running job).
    Cancel,
    /// Save the last video: `.mp4`, `.safetensors` (exact f32) or a folder (PNG frames).
    Save(PathBuf, Video),
    /// List the presets (answered with [`EngineEvent::Presets`]).
    LoadPresets,
    /// Save the settings' plan and size as the user preset `name`, then list the presets again.
    SavePreset(String, Box<Settings>),
    /// Predict each rank's peak for a request (answered with [`EngineEvent::Prediction`]).
    Predict(Box<RunRequest>),
    Shutdown,
}

/// Which model a run uses.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelChoice {
    /// The built-in demo (written to the data dir at first use; prompts become stand-ins).
    Demo,
    Folder(PathBuf),
}

/// Everything a run needs, copied from the settings when Generate is pressed.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    pub model: ModelChoice,
    pub prompt: String,
    pub negative_prompt: String,
    /// Input image for image-to-video (only sent when the model takes one).
    pub image: Option<PathBuf>,
    pub params: GenerateParams,
    pub plan: ParallelPlan,
    pub device: DeviceKind,
    /// Component files (transformer, VAE, text encoder, …), config and LoRAs: the CLI's file flags.
    pub files: ModelFiles,
}

impl RunRequest {
    pub fn is_demo(&self) -> bool {
        self.model == ModelChoice::Demo
    }

    /// The engine request for the model at `root` (inspected as `spec`): prompts are text for the
    /// model's tokenizer and UMT5 (the demo's too); the image goes along when the model takes one.
    pub fn to_generation(&self, root: &Path, spec: &ModelSpec) -> GenerationRequest {
        let prompt = |text: &str| Prompt::Text(text.into());
        let mut params = self.params.clone();
        // The low-noise expert's scale exists only for two-expert (A14B) models.
        params.guidance_2 = params.guidance_2.filter(|_| spec.two_experts());
        GenerationRequest {
            negative: Some(prompt(&self.negative_prompt)),
            image: self.image.clone().filter(|_| spec.accepts_image()),
            plan: self.plan,
            device: self.device,
            // The Live view shows the picture after every step.
            preview_every: Some(1),
            files: self.files.clone(),
            ..GenerationRequest::new(root, prompt(&self.prompt), params)
        }
    }
}

/// The decoded video of the last run: RGB8 frames to show, and the exact f32 video to save.
#[derive(Clone)]
pub struct Video {
    pub frames: Arc<Frames>,
    pub fps: f64,
    pub exact: Arc<tessera_engine::api::Video>,
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
    Model(PathBuf, ModelFiles, Box<Result<ModelSpec, String>>),
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
    /// A worker died while no run was going on; the next Generate starts fresh workers.
    WorkersLost(String),
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
    /// `None`: [`crate::studio::demo::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Skip the device probe at start (it runs `tessera-worker --doctor`).
    pub skip_device_probe: bool,
}
