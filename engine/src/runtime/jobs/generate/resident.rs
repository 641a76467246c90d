//! Weights a worker keeps loaded between `Generate` jobs, so a session's second run with the same
//! model and plan (another prompt, seed or size) does not read and convert the checkpoint again:
//! the transformer expert(s) (all of them, or under phased residency the one that ran last) with the communicators they were sharded over, and the VAE parts.
//!
//! Reused only when everything that shaped them is the same: the model folder, the component files,
//! config and LoRAs (strengths and targets included) it was opened with, every weight and LoRA file
//! (size and modification time), the plan, the run dtype and the VAE parts. A job that asks
//! for anything else (or `keep_weights: false`) drops them first, so two models are never resident
//! at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use candle_core::DType;

use super::timed::CommStats;
use crate::model_spec::{ModelFiles, ModelSpec};
use crate::models::vae::Vae;
use crate::models::wan::vae::VaeParts;
use crate::parallel::comm::Collective;
use crate::parallel::plan::ParallelPlan;
use crate::pipeline::sharded::{Expert, PlanGroups};

/// What the resident weights were loaded for.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidentKey {
    model: PathBuf,
    /// Component files, config and LoRAs (with strengths and targets) the model was opened with.
    files: ModelFiles,
    /// (path, length, modified) of every weight file of the transformer(s), the VAE and the LoRAs.
    weight_files: Vec<(PathBuf, u64, Option<SystemTime>)>,
    plan: ParallelPlan,
    dtype: DType,
    vae_parts: Option<VaeParts>,
}

impl ResidentKey {
    pub fn new(model: &ModelSpec, plan: ParallelPlan, dtype: DType, vae_parts: Option<VaeParts>) -> Self {
        let components = std::iter::once(&model.components.transformer)
            .chain(model.components.transformer_2.as_ref())
            .chain(std::iter::once(&model.components.vae));
        let loras = model.files.loras.iter().map(|l| l.path.clone());
        let weight_files = components
            .flat_map(|c| c.files.iter().cloned())
            .chain(loras)
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                (f, len, meta.and_then(|m| m.modified().ok()))
            })
            .collect();
        Self { model: model.root.clone(), files: model.files.clone(), weight_files, plan, dtype, vae_parts }
    }
}

/// The loaded weights and the communicators the experts were sharded over.
pub struct Resident {
    pub key: ResidentKey,
    pub stats: Arc<CommStats>,
    pub world: Arc<dyn Collective>,
    pub groups: PlanGroups,
    /// Expert slots: under phased residency only the last run's running expert is loaded.
    pub experts: Vec<Option<Expert>>,
    pub vae: Option<Vae>,
    /// Stored bytes of the resident VAE.
    pub vae_bytes: u64,
}

/// One worker process runs one job at a time; the slot is only touched by the job thread.
static SLOT: Mutex<Option<Resident>> = Mutex::new(None);

/// Takes the resident weights if they were loaded for `key`; otherwise drops whatever is resident
/// (before the caller loads anything, so peaks never hold two models).
pub fn take(key: &ResidentKey) -> Option<Resident> {
    let mut slot = SLOT.lock().unwrap_or_else(|p| p.into_inner());
    match slot.take() {
        Some(r) if &r.key == key => Some(r),
        _ => None,
    }
}

/// Keeps `resident` for the next job.
pub fn keep(resident: Resident) {
    *SLOT.lock().unwrap_or_else(|p| p.into_inner()) = Some(resident);
}
