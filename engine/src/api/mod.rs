//! The engine's front door: what the CLI and the studio use to run a generation, and the only
//! engine module they import (besides the event and report types re-exported here).
//!
//! - [`ModelSpec`] (from [`crate::model_spec`]): the one reader of a model on disk.
//! - [`GenerationRequest`] ([`request`]): model, prompts, image, size, schedule, guidance, seed,
//!   plan, device, output — validated once by [`GenerationRequest::validate`], whose
//!   [`RequestError`] words itself for the studio (labels) or the CLI (flags).
//! - [`Session`] ([`session`]): a world of workers kept between runs; `generate(&request, on_event)`
//!   resolves the prompts ([`prompts`]), runs the generation on the workers (a world of one is the
//!   same path), emits [`JobEvent`]s and returns a [`Generation`]: the [`Video`] ([`video`]) and the
//!   [`GenerationReport`] ([`report`]), one shape for every plan.
//! - [`Settings`] ([`settings`]): the request as JSON inside every MP4/PNG written, read back by
//!   `tessera info` and the studio.
//!
//! Beside the generation path, small groups of named re-exports (never a glob of an internal
//! module), each with its own doc:
//!
//! - [`planning`]: predictions, fit checks, plan search and presets (`tessera plan`, the studio).
//! - [`devices`]: the doctor's device report.
//! - [`text`]: prompt encoding in this process (`tessera encode-prompt`).
//! - [`random_models`]: model folders with seeded random weights (`make-model`, benchmarks).
//! - [`tools`]: one job on a world of workers, the VAE and transformer in process, tensor files —
//!   for the tool commands only (`vae`, `bench`).
//!
//! ```no_run
//! use tessera_engine::api::{GenerateParams, GenerationRequest, Prompt, Session, SessionOptions};
//! let params = GenerateParams { height: 704, width: 1280, frames: 121, steps: 50, guidance: 5.0,
//!     guidance_2: None, shift: None, seed: 0, scheduler: None, sigmas: None };
//! let req = GenerationRequest::new("Wan2.2-TI2V-5B-Diffusers", Prompt::Text("a fox".into()), params);
//! let mut session = Session::new(SessionOptions::default());
//! let generation = session.generate(&req, &mut |event| println!("{event:?}")).unwrap();
//! generation.video.unwrap().save("fox.mp4".as_ref()).unwrap();
//! ```

pub mod devices;
pub mod error;
pub mod planning;
mod prompts;
pub mod random_models;
pub mod report;
pub mod request;
pub mod session;
pub mod settings;
pub mod text;
pub mod tools;
pub mod video;

pub use crate::fields::{render, Audience, Field};
pub use crate::media::{write_png, Frames, OutputKind};
pub use crate::model_spec::{
    DemoInfo, Family, Layout, LoraSpec, LoraTarget, ModelFiles, ModelSpec, ModelSpecError, TextModel, Variant,
};
pub use crate::models::wan::checkpoint_keys::KeyDialect;
pub use crate::parallel::plan::{
    ParallelPlan, PlanError, PlanModel, Residency, TextEncoderPlacement, TilingSpec, VaeMode,
};
pub use crate::parallel::Rank;
pub use crate::pipeline::request::{GenerateParams, RequestError};
pub use crate::runtime::protocol::{DenoisePreview, DeviceKind, LogLevel, Rgb8Preview, VaePiece};
pub use crate::runtime::{CommBackend, JobEvent, PhaseReport, RankReport, RunReport};
pub use crate::scheduler::SchedulerKind;
pub use crate::tensor_io::{write_atomic as write_tensors, write_file_atomic, TensorIoError};
pub use error::{explain, SessionError};
pub use report::{DenoiseReport, GenerationReport, RankGenerationReport};
pub use request::{GenerationRequest, Output, Prompt};
pub use session::{Encoded, Generation, Session, SessionCancel, SessionOptions};
pub use settings::{ModelFile, Settings, SettingsError};
pub use video::Video;
