//! The experts of a `Generate` job during the denoise, as the plan's [`Residency`] says: which are
//! loaded, the phases the report shows for them, and the swap at the boundary step.
//!
//! Phases: a one-expert model reports `denoise`; a two-expert model (A14B) `denoise_high` for the
//! high-noise expert's steps and `denoise_low` for the low-noise one's, with `switch` between them
//! under phased residency: every rank frees the high-noise expert, then reads its part (the stem
//! and its FSDP slices) of the low-noise one from the memory-mapped checkpoint. Every rank switches
//! at the same step (the timesteps are the same everywhere), so the collectives stay in step.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};

use super::super::{JobCtx, Phase};
use crate::parallel::plan::Residency;
use crate::pipeline::denoise::NoisePredictor;
use crate::pipeline::sharded::{PlanGroups, ShardedPredictor};

/// The report's name of the phase in which expert `index` denoises.
pub fn denoise_phase(two_experts: bool, index: usize) -> &'static str {
    match (two_experts, index) {
        (false, _) => "denoise",
        (true, 0) => "denoise_high",
        (true, _) => "denoise_low",
    }
}

/// Which experts `load` reads: all of them (pipeline residency, or one expert), or only the one
/// that runs the first step (phased).
pub fn to_load(residency: Residency, two_experts: bool, first_expert: usize) -> Option<usize> {
    (two_experts && residency == Residency::Phased).then_some(first_expert)
}

/// A [`ShardedPredictor`] that opens the phase of each expert as the loop reaches it and swaps
/// experts in that are not loaded.
pub struct ExpertPhases<'a> {
    ctx: &'a JobCtx,
    inner: ShardedPredictor,
    root: PathBuf,
    two_experts: bool,
    groups: PlanGroups,
    dtype: DType,
    device: Device,
    /// The expert whose phase is open, and that phase.
    open: Option<(usize, Phase<'a>)>,
    /// Bytes read at switches (0 when nothing was swapped).
    pub switched_bytes: u64,
}

impl<'a> ExpertPhases<'a> {
    pub fn new(
        ctx: &'a JobCtx,
        inner: ShardedPredictor,
        root: &Path,
        two_experts: bool,
        groups: &PlanGroups,
        dtype: DType,
    ) -> Self {
        Self {
            ctx,
            inner,
            root: root.to_path_buf(),
            two_experts,
            groups: groups.clone(),
            dtype,
            device: ctx.device().clone(),
            open: None,
            switched_bytes: 0,
        }
    }

    /// Closes the open phase and hands the predictor back.
    pub fn finish(mut self) -> ShardedPredictor {
        self.open = None;
        self.inner
    }

    fn enter(&mut self, expert: usize) -> Result<()> {
        // The previous expert's phase ends before the switch starts, so the two never overlap.
        self.open = None;
        if !self.inner.is_loaded(expert) {
            let _switch = self.ctx.phase("switch");
            self.inner.release_all_but(expert);
            let model = ShardedPredictor::load_expert(&self.root, expert, &self.groups, self.dtype, &self.device)?;
            self.switched_bytes += model.resident_bytes();
            tracing::info!("expert {} swapped in ({} B on this rank)", expert + 1, model.resident_bytes());
            self.inner.install(expert, model)?;
        }
        self.open = Some((expert, self.ctx.phase(denoise_phase(self.two_experts, expert))));
        Ok(())
    }
}

impl NoisePredictor for ExpertPhases<'_> {
    fn predict(&mut self, expert: usize, input: &Tensor, timestep: &Tensor, guidance: Option<f64>) -> Result<Tensor> {
        if self.open.as_ref().map(|(e, _)| *e) != Some(expert) {
            self.enter(expert)?;
        }
        self.inner.predict(expert, input, timestep, guidance)
    }
}
