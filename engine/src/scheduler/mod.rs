//! Flow-matching samplers for the denoising loop, configured from a diffusers
//! `scheduler/scheduler_config.json` (candle C6: the sampling math lives apart from the network).
//!
//! - [`flow_unipc`] — `UniPCMultistepScheduler` in flow mode (`use_flow_sigmas`), Wan's default.
//! - [`flow_match_euler`] — `FlowMatchEulerDiscreteScheduler`.
//!
//! [`from_pretrained`] builds the one the config names (or the one a request names with
//! [`SchedulerKind`]); [`Scheduler::set_sigmas`] takes a custom schedule (`--sigmas`).
//!
//! Both reproduce diffusers' numerics: the sigma tables are built in float64 like numpy and stored
//! as float32, and every per-step coefficient is a float32 scalar, as the torch code computes it.

pub mod flow_match_euler;
pub mod flow_unipc;

use std::path::{Path, PathBuf};

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

pub use flow_match_euler::{FlowMatchEulerConfig, FlowMatchEulerScheduler};
pub use flow_unipc::{FlowUniPcConfig, FlowUniPcScheduler};

/// A multistep sampler. The pipeline calls [`Scheduler::set_timesteps`] once, feeds the model
/// `timesteps()[i]` and hands its output to [`Scheduler::step`] with the same `i`, in order.
pub trait Scheduler: Send {
    /// Builds the timestep/sigma tables for `num_inference_steps` steps and resets the history.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;
    /// Builds the tables from a given schedule instead: one sigma per step, before the shift
    /// (diffusers' `set_timesteps(sigmas=…)`; the lightx2v 4-step recipe is `[1, 0.75, 0.5, 0.25]`).
    fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()>;
    /// The value fed to the model at each step (`num_inference_steps` entries). UniPC's are integers
    /// stored as floats (diffusers truncates them to int64); Euler's are fractional.
    fn timesteps(&self) -> &[f32];
    /// The noise level of each step plus the final one (`num_inference_steps + 1` entries).
    fn sigmas(&self) -> &[f32];
    /// Advances `sample` (the latents at step `step_index`) given the model's velocity prediction.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor>;
}

/// Errors from reading a scheduler folder.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("cannot read scheduler config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot parse scheduler config {path}: {source}")]
    BadConfig { path: PathBuf, source: serde_json::Error },
    #[error("unsupported scheduler `{class}` in {path}: Tessera runs UniPCMultistepScheduler (flow mode) and FlowMatchEulerDiscreteScheduler")]
    UnknownClass { class: String, path: PathBuf },
    #[error("unsupported scheduler setting in {path}: {msg}")]
    Unsupported { path: PathBuf, msg: String },
}

/// The samplers a request can name (`--scheduler`), overriding the model's `scheduler_config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// `UniPCMultistepScheduler` in flow mode (Wan's default).
    #[value(name = "unipc")]
    UniPc,
    /// `FlowMatchEulerDiscreteScheduler` (the distilled 4-step recipes).
    Euler,
}

impl SchedulerKind {
    /// The name of the flag value and of the settings JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::UniPc => "unipc",
            Self::Euler => "euler",
        }
    }

    /// The diffusers class a `scheduler_config.json` names for this sampler.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::UniPc => "UniPCMultistepScheduler",
            Self::Euler => "FlowMatchEulerDiscreteScheduler",
        }
    }
}

/// Builds the tables of `sched`: the given schedule (`sigmas`, before the shift) or the config's
/// for `steps` steps.
pub fn set_schedule(sched: &mut dyn Scheduler, steps: usize, sigmas: Option<&[f64]>) -> Result<()> {
    match sigmas {
        Some(s) => sched.set_sigmas(s),
        None => sched.set_timesteps(steps),
    }
}

/// Checks a custom schedule: every sigma in (0, 1], strictly decreasing (the noise level falls
/// at every step). Returns the reason it is not one.
pub fn check_sigmas(sigmas: &[f64]) -> std::result::Result<(), String> {
    if sigmas.is_empty() {
        return Err("needs at least one value".into());
    }
    if let Some(s) = sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0 && **s <= 1.0)) {
        return Err(format!("{s} is outside (0, 1]"));
    }
    if let Some(w) = sigmas.windows(2).find(|w| w[1] >= w[0]) {
        return Err(format!("must decrease step by step ({} then {})", w[0], w[1]));
    }
    Ok(())
}

/// Reads `dir/scheduler_config.json` (a pipeline's `scheduler/` folder, or the pipeline root
/// holding one) and builds the scheduler its `_class_name` names, or `kind` when given: a UniPC
/// config run with Euler keeps its `flow_shift` as Euler's `shift`, and the other way round.
/// `shift` overrides the config's `flow_shift` (UniPC) or `shift` (Euler), as Wan's `--shift` does.
pub fn from_pretrained(
    dir: &Path,
    kind: Option<SchedulerKind>,
    shift: Option<f64>,
) -> std::result::Result<Box<dyn Scheduler>, SchedulerError> {
    let dir = if dir.join("scheduler_config.json").is_file() { dir.to_path_buf() } else { dir.join("scheduler") };
    let path = dir.join("scheduler_config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| SchedulerError::Io { path: path.clone(), source })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| SchedulerError::BadConfig { path: path.clone(), source })?;
    let class = value.get("_class_name").and_then(|c| c.as_str()).unwrap_or("UniPCMultistepScheduler").to_string();
    let parse_err = |source| SchedulerError::BadConfig { path: path.clone(), source };
    let unsupported = |msg: String| SchedulerError::Unsupported { path: path.clone(), msg };
    let configured = [SchedulerKind::UniPc, SchedulerKind::Euler].into_iter().find(|k| k.class_name() == class);
    let Some(configured) = configured else { return Err(SchedulerError::UnknownClass { class, path }) };
    // What both configs share: the training length, the shift and its terminal stretch.
    let (train, config_shift, terminal) = match configured {
        SchedulerKind::UniPc => {
            let c: FlowUniPcConfig = serde_json::from_value(value.clone()).map_err(parse_err)?;
            (c.num_train_timesteps, c.flow_shift, c.shift_terminal)
        }
        SchedulerKind::Euler => {
            let c: FlowMatchEulerConfig = serde_json::from_value(value.clone()).map_err(parse_err)?;
            (c.num_train_timesteps, c.shift, c.shift_terminal)
        }
    };
    let shift = shift.unwrap_or(config_shift);
    match kind.unwrap_or(configured) {
        SchedulerKind::UniPc => {
            let mut cfg: FlowUniPcConfig = if configured == SchedulerKind::UniPc {
                serde_json::from_value(value).map_err(parse_err)?
            } else {
                FlowUniPcConfig { num_train_timesteps: train, shift_terminal: terminal, ..FlowUniPcConfig::wan(shift) }
            };
            cfg.flow_shift = shift;
            Ok(Box::new(FlowUniPcScheduler::new(cfg).map_err(|e| unsupported(e.to_string()))?))
        }
        SchedulerKind::Euler => {
            let mut cfg: FlowMatchEulerConfig = if configured == SchedulerKind::Euler {
                serde_json::from_value(value).map_err(parse_err)?
            } else {
                FlowMatchEulerConfig { num_train_timesteps: train, shift_terminal: terminal, ..Default::default() }
            };
            cfg.shift = shift;
            Ok(Box::new(FlowMatchEulerScheduler::new(cfg).map_err(|e| unsupported(e.to_string()))?))
        }
    }
}

/// `numpy.linspace(start, stop, num)` in float64, bit for bit: `i * step + start`, with the last
/// entry set to `stop` exactly.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut ys: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            ys[num - 1] = stop;
            ys
        }
    }
}

/// The flow-matching time shift `s·σ / (1 + (s−1)·σ)`, in diffusers' operation order.
pub(crate) fn shift_sigma(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// LTX-Video's `stretch_shift_to_terminal`: rescales `1−σ` so that the last sigma equals `terminal`.
pub(crate) fn stretch_to_terminal(sigmas: &mut [f64], terminal: f64) {
    let Some(&last) = sigmas.last() else { return };
    let scale = (1.0 - last) / (1.0 - terminal);
    for s in sigmas.iter_mut() {
        *s = 1.0 - (1.0 - *s) / scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        // numpy.linspace(1, 0.001, 4) == [1.0, 0.667, 0.334, 0.001]
        let ys = np_linspace(1.0, 0.001, 4);
        assert_eq!(ys.len(), 4);
        assert!((ys[1] - 0.667).abs() < 1e-12 && (ys[2] - 0.334).abs() < 1e-12);
        assert_eq!(ys[3], 0.001);
        assert_eq!(np_linspace(3.0, 5.0, 1), vec![3.0]);
    }

    #[test]
    fn loads_the_pipeline_scheduler_folder() {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline"));
        let mut sched = from_pretrained(root, None, None).expect("pipeline scheduler_config.json parses");
        sched.set_timesteps(4).expect("set_timesteps");
        assert_eq!(sched.timesteps().len(), 4);
        assert_eq!(sched.timesteps()[0], 999.0);
        assert_eq!(sched.sigmas().len(), 5);
        assert_eq!(sched.sigmas()[4], 0.0);
    }

    #[test]
    fn unknown_class_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("scheduler_config.json"), r#"{"_class_name": "DDIMScheduler"}"#).expect("write");
        let err = from_pretrained(dir.path(), None, None).err().expect("must fail").to_string();
        assert!(err.contains("DDIMScheduler"), "{err}");
    }
}
