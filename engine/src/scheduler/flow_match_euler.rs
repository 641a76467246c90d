//! The diffusers `FlowMatchEulerDiscreteScheduler`: first-order Euler on the flow ODE,
//! `x_{k+1} = x_k + (σ_{k+1} − σ_k)·v`.
//!
//! A diffusers quirk is kept on purpose: the training sigmas are already shifted, and
//! `set_timesteps` shifts the interpolated sigmas once more. Timesteps are fractional (`σ·1000`).

use candle_core::{bail, Result, Tensor};
use serde::Deserialize;

use super::{np_linspace, shift_sigma, stretch_to_terminal, Scheduler};

/// `scheduler_config.json` of a `FlowMatchEulerDiscreteScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
}

impl Default for FlowMatchEulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: Some(false),
            use_exponential_sigmas: Some(false),
            use_beta_sigmas: Some(false),
        }
    }
}

/// Euler flow-matching sampler state (stateless between steps apart from the tables).
#[derive(Debug)]
pub struct FlowMatchEulerScheduler {
    cfg: FlowMatchEulerConfig,
    sigma_min: f64,
    sigma_max: f64,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

impl FlowMatchEulerScheduler {
    pub fn new(cfg: FlowMatchEulerConfig) -> Result<Self> {
        if cfg.use_dynamic_shifting {
            bail!("FlowMatchEuler use_dynamic_shifting needs a resolution-dependent `mu`; set a fixed shift instead")
        }
        if cfg.invert_sigmas {
            bail!("FlowMatchEuler invert_sigmas is not supported")
        }
        for (name, on) in [
            ("use_karras_sigmas", cfg.use_karras_sigmas),
            ("use_exponential_sigmas", cfg.use_exponential_sigmas),
            ("use_beta_sigmas", cfg.use_beta_sigmas),
        ] {
            if on == Some(true) {
                bail!("FlowMatchEuler `{name}` is not supported by Tessera")
            }
        }
        if !(cfg.shift.is_finite() && cfg.shift > 0.0) {
            bail!("shift must be a positive number, got {}", cfg.shift)
        }
        if cfg.num_train_timesteps == 0 {
            bail!("num_train_timesteps must be positive")
        }
        // The constructor's training table is float32 torch: t = 1000..1, σ = t/1000, shifted.
        // Only its ends are used later, read back as Python floats.
        let n = cfg.num_train_timesteps as f32;
        let shift = cfg.shift as f32;
        let shifted = |t: f32| {
            let s = t / n;
            shift * s / (1.0 + (shift - 1.0) * s)
        };
        Ok(Self {
            sigma_max: shifted(n) as f64,
            sigma_min: shifted(1.0) as f64,
            cfg,
            timesteps: vec![],
            sigmas: vec![],
        })
    }

    pub fn config(&self) -> &FlowMatchEulerConfig {
        &self.cfg
    }

    /// Stores the shifted float32 sigmas with the terminal 0, and the timesteps `σ·1000` computed
    /// on them in float32, as torch does.
    fn set_shifted(&mut self, sigmas: Vec<f32>) {
        let n_train = self.cfg.num_train_timesteps as f32;
        self.timesteps = sigmas.iter().map(|&s| s * n_train).collect();
        self.sigmas = sigmas;
        self.sigmas.push(0.0);
    }
}

/// `np.linspace(1.0, 0.0, n + 1)[:-1]`: the sigmas both HunyuanVideo 1.5 pipelines pass to
/// [`Scheduler::set_sigmas`] (a different schedule from [`Scheduler::set_timesteps`], which shifts
/// already-shifted training sigmas again).
pub fn linear_sigmas(n: usize) -> Vec<f64> {
    let mut s = np_linspace(1.0, 0.0, n + 1);
    s.pop();
    s
}

impl Scheduler for FlowMatchEulerScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        if num_inference_steps == 0 {
            bail!("the number of inference steps must be at least 1")
        }
        let n_train = self.cfg.num_train_timesteps as f64;
        let ts = np_linspace(self.sigma_max * n_train, self.sigma_min * n_train, num_inference_steps);
        let mut sigmas: Vec<f64> = ts.iter().map(|t| shift_sigma(self.cfg.shift, t / n_train)).collect();
        if let Some(terminal) = self.cfg.shift_terminal.filter(|t| *t != 0.0) {
            stretch_to_terminal(&mut sigmas, terminal);
        }
        self.set_shifted(sigmas.iter().map(|&s| s as f32).collect());
        Ok(())
    }

    /// diffusers casts the given list to a float32 array and shifts it in float32 (NumPy 2 keeps
    /// the array's dtype against a Python float), so the shift runs in f32 here too.
    fn set_sigmas(&mut self, given: &[f64]) -> Result<()> {
        if given.is_empty() {
            bail!("a custom schedule needs at least one sigma")
        }
        let shift = self.cfg.shift as f32;
        let mut sigmas: Vec<f32> = given
            .iter()
            .map(|&s| {
                let s = s as f32;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect();
        if let Some(terminal) = self.cfg.shift_terminal.filter(|t| *t != 0.0) {
            let mut wide: Vec<f64> = sigmas.iter().map(|&s| s as f64).collect();
            stretch_to_terminal(&mut wide, terminal);
            sigmas = wide.iter().map(|&s| s as f32).collect();
        }
        self.set_shifted(sigmas);
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// diffusers upcasts the sample to f32 for the update and casts the result back to the model
    /// output's dtype; both are kept so a bf16 run matches it.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        if step_index + 1 >= self.sigmas.len() {
            bail!("Euler step {step_index} is out of range for {} steps (call set_timesteps)", self.timesteps.len())
        }
        if model_output.shape() != sample.shape() {
            bail!("model output {:?} and sample {:?} differ in shape", model_output.shape(), sample.shape())
        }
        let dt = self.sigmas[step_index + 1] - self.sigmas[step_index];
        let sample = sample.to_dtype(candle_core::DType::F32)?;
        let update = model_output.to_dtype(candle_core::DType::F32)?.affine(dt as f64, 0.0)?;
        (sample + update)?.to_dtype(model_output.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_diffusers() {
        // FlowMatchEulerDiscreteScheduler(shift=5.0).set_timesteps(50).sigmas:
        // 1.0, 0.99587, …, 0.11482, 0.02441, 0.
        let mut s = FlowMatchEulerScheduler::new(FlowMatchEulerConfig { shift: 5.0, ..Default::default() })
            .expect("valid config");
        s.set_timesteps(50).expect("set_timesteps");
        let sig = s.sigmas();
        assert_eq!(sig.len(), 51);
        assert_eq!(sig[0], 1.0);
        assert!((sig[1] - 0.99587).abs() < 1e-5, "{}", sig[1]);
        assert!((sig[48] - 0.11482).abs() < 1e-5, "{}", sig[48]);
        assert!((sig[49] - 0.02441).abs() < 1e-5, "{}", sig[49]);
        assert_eq!(sig[50], 0.0);
        assert_eq!(s.timesteps()[0], 1000.0);
    }
}
