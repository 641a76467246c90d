//! The studio's state as plain structs: what the user set (persisted through eframe storage), what
//! the current run has reported so far, and the messages on screen. Panels read and edit these;
//! only `app.rs` applies engine events to them.

use serde::{Deserialize, Serialize};
use tessera_engine::api::{DenoisePreview, GenerateParams, ModelFiles, ParallelPlan, Rank, SchedulerKind, VaePiece};

/// Everything on the Setup and Parallel panels; restored at the next start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Run the built-in demo model instead of `model_dir`.
    pub use_demo: bool,
    /// A diffusers pipeline folder or a folder of single files (typed or picked with "Browse…").
    pub model_dir: String,
    /// Component files replacing (or standing in for) the folder's, the config for them, and
    /// LoRAs: what the CLI's `--transformer … --lora` flags give.
    pub files: ModelFiles,
    pub prompt: String,
    pub negative_prompt: String,
    /// PNG/JPEG for image-to-video; empty for text-to-video.
    pub image: String,
    pub width: usize,
    pub height: usize,
    /// 4k+1.
    pub frames: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Low-noise expert guidance (A14B only).
    pub guidance_2: f64,
    /// Flow shift; `None` keeps the scheduler config's.
    pub shift: Option<f64>,
    pub seed: u64,
    /// Sampler; `None` keeps the scheduler config's.
    pub scheduler: Option<SchedulerKind>,
    /// Custom schedule (one sigma per step, before the shift); `None`: the scheduler's spacing.
    pub sigmas: Option<Vec<f64>>,
    /// Where "Save" writes: `.mp4`, `.safetensors` or a folder ending in `/` (PNG frames).
    pub output: String,
    pub plan: ParallelPlan,
    /// The preset last picked (the plan may have been edited since).
    pub preset: Option<String>,
}

impl Settings {
    /// Size, schedule and guidance as the engine takes them (`guidance_2` is dropped for one-expert
    /// models when the request is made: see `RunRequest::to_generation`).
    pub fn params(&self) -> GenerateParams {
        GenerateParams {
            height: self.height,
            width: self.width,
            frames: self.frames,
            steps: self.steps,
            guidance: self.guidance,
            guidance_2: Some(self.guidance_2),
            shift: self.shift,
            seed: self.seed,
            scheduler: self.scheduler,
            sigmas: self.sigmas.clone(),
        }
    }
}

impl Default for Settings {
    /// The demo's request (its `demo.json`: size, frames, steps, guidance, an example prompt); the
    /// fallbacks only matter when the demo folder is missing, and then the run says so.
    fn default() -> Self {
        let demo = crate::studio::demo::info();
        Self {
            use_demo: true,
            model_dir: String::new(),
            files: ModelFiles::default(),
            prompt: demo.map_or("a red ball moving right on black", |d| d.example.as_str()).into(),
            negative_prompt: String::new(),
            image: String::new(),
            width: demo.map_or(64, |d| d.width),
            height: demo.map_or(64, |d| d.height),
            frames: demo.map_or(9, |d| d.frames),
            steps: demo.map_or(10, |d| d.steps),
            guidance: demo.map_or(3.0, |d| d.guidance),
            guidance_2: demo.map_or(3.0, |d| d.guidance),
            shift: demo.and_then(|d| d.shift),
            seed: 0,
            scheduler: None,
            sigmas: None,
            output: "tessera-output.mp4".into(),
            // The demo runs on two CPU virtual devices, its VAE decode split in halo slabs.
            plan: ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 2, ..ParallelPlan::default() },
            preset: None,
        }
    }
}

/// Where the current run is.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RunStatus {
    #[default]
    Idle,
    /// Before the job starts: preparing inputs, starting workers.
    Preparing(String),
    Running,
    Finished {
        wall_seconds: f64,
    },
    Failed(String),
    Cancelled,
}

impl RunStatus {
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Preparing(_) | Self::Running)
    }
}

/// One telemetry sample of one rank, in the units the chart draws.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPoint {
    pub elapsed_secs: f64,
    pub used_bytes: u64,
    pub peak_bytes: u64,
    pub rss_bytes: u64,
}

/// Everything one rank reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RankTrace {
    pub memory: Vec<MemoryPoint>,
    pub device_total_bytes: Option<u64>,
    /// Finished phases: name, start and length in seconds, peak bytes.
    pub phases: Vec<PhaseBand>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PhaseBand {
    pub name: String,
    pub start_secs: f64,
    pub seconds: f64,
    pub peak_bytes: u64,
}

/// The latest progress report and the times of the steps seen (for it/s and ETA).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub message: String,
    pub step: u64,
    pub total: u64,
    /// `(seconds since the run started, step)` for each step report.
    pub history: Vec<(f64, u64)>,
}

impl Progress {
    /// Steps per second over the reports so far (`None` before two reports).
    pub fn steps_per_sec(&self) -> Option<f64> {
        let (first, last) = (self.history.first()?, self.history.last()?);
        let (dt, ds) = (last.0 - first.0, last.1.saturating_sub(first.1));
        (dt > 0.0 && ds > 0).then(|| ds as f64 / dt)
    }

    pub fn eta_secs(&self) -> Option<f64> {
        let rate = self.steps_per_sec()?;
        Some(self.total.saturating_sub(self.step) as f64 / rate)
    }
}

/// A decoded VAE piece as the mosaic shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PieceView {
    pub rank: Rank,
    /// 1-based arrival order (the number drawn on the piece).
    pub arrival: usize,
    pub piece: VaePiece,
    /// The rank's last memory sample when the piece arrived.
    pub rank_memory: Option<MemoryPoint>,
}

/// The live view of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveRun {
    pub status: RunStatus,
    pub world_size: usize,
    /// Index = rank.
    pub ranks: Vec<RankTrace>,
    pub progress: Progress,
    pub pieces: Vec<PieceView>,
    /// The latest denoise preview (the picture being made), and how many arrived.
    pub denoise_preview: Option<DenoisePreview>,
    pub denoise_previews: usize,
    /// Output size of the run in pixels (height, width), for the mosaic canvas.
    pub output_hw: (usize, usize),
    pub log: Vec<String>,
}

impl LiveRun {
    pub fn rank_mut(&mut self, rank: Rank) -> &mut RankTrace {
        if self.ranks.len() <= rank.0 {
            self.ranks.resize_with(rank.0 + 1, RankTrace::default);
        }
        &mut self.ranks[rank.0]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// A dismissible message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: u64,
    pub level: Level,
    pub text: String,
}

/// The messages on screen, newest last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Messages {
    pub items: Vec<Message>,
    next_id: u64,
}

impl Messages {
    pub fn push(&mut self, level: Level, text: impl Into<String>) {
        let text = text.into();
        // The same message twice (e.g. Generate pressed again) stays one message.
        if self.items.iter().any(|m| m.text == text) {
            return;
        }
        self.next_id += 1;
        self.items.push(Message { id: self.next_id, level, text });
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Level::Error, text);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Level::Info, text);
    }

    pub fn dismiss(&mut self, id: u64) {
        self.items.retain(|m| m.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rate_and_eta() {
        let p = Progress { message: "denoise".into(), step: 3, total: 5, history: vec![(1.0, 1), (3.0, 3)] };
        assert_eq!(p.steps_per_sec(), Some(1.0));
        assert_eq!(p.eta_secs(), Some(2.0));
        assert_eq!(Progress::default().eta_secs(), None);
    }

    #[test]
    fn messages_dedup_and_dismiss() {
        let mut m = Messages::default();
        m.error("a");
        m.error("a");
        m.info("b");
        assert_eq!(m.items.len(), 2);
        let id = m.items[0].id;
        m.dismiss(id);
        assert_eq!(m.items.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn settings_survive_a_round_trip_and_missing_fields() {
        let s = Settings { seed: 42, ..Settings::default() };
        let back: Settings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // Settings written by an older studio lack fields: they take the defaults.
        let old: Settings = serde_json::from_str(r#"{"seed": 7}"#).unwrap();
        assert_eq!(old.seed, 7);
        assert_eq!(old.frames, Settings::default().frames);
    }
}

/// The central area's pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    #[default]
    Live,
    Result,
    Compare,
}

/// What the user is looking at (not persisted, except the tab).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewState {
    pub tab: Tab,
    /// Index into `LiveRun::pieces` of the piece whose inspector is open.
    pub inspected_piece: Option<usize>,
    /// Zoom of the inspector's preview.
    pub inspector_zoom: f32,
    /// Latent chunk the mosaic shows (halo mode emits one slab per chunk); `None`: the latest.
    pub mosaic_chunk: Option<usize>,
    /// Result frame shown.
    pub frame: usize,
    pub playing: bool,
    /// Seconds of playback accumulated since the current frame was shown.
    pub play_clock: f64,
    /// Runs ticked in the Compare table (the first two are diffed).
    pub compare_selected: Vec<u64>,
    /// Name typed in "Save preset…".
    pub preset_name: String,
    pub preset_dialog_open: bool,
}
