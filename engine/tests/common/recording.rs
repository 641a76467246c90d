//! A scheduler wrapper for parity tests of the denoise loop: it forwards every call to the real
//! scheduler unchanged and records what the loop passed to each step (the guided model output)
//! and what the step returned (the latents), to compare per step against diffusers'
//! `noise_pred_step{i}` / `latents_step{i}`.

use candle_core::{Result, Tensor};
use tessera_engine::scheduler::Scheduler;

/// Records every `step` call of the wrapped scheduler: (model output, returned latents).
pub struct Recording {
    pub inner: Box<dyn Scheduler>,
    pub steps: Vec<(Tensor, Tensor)>,
}

impl Recording {
    pub fn new(inner: Box<dyn Scheduler>) -> Self {
        Self { inner, steps: Vec::new() }
    }
}

impl Scheduler for Recording {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.inner.set_timesteps(n)
    }
    fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        self.inner.set_sigmas(sigmas)
    }
    fn timesteps(&self) -> &[f32] {
        self.inner.timesteps()
    }
    fn sigmas(&self) -> &[f32] {
        self.inner.sigmas()
    }
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        let next = self.inner.step(model_output, step_index, sample)?;
        self.steps.push((model_output.clone(), next.clone()));
        Ok(next)
    }
}
