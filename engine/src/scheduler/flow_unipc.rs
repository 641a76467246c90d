//! UniPC multistep (predictor UniP + corrector UniC, B(h) variants) in flow-matching mode: the
//! diffusers `UniPCMultistepScheduler` with `use_flow_sigmas=True, prediction_type="flow_prediction"`,
//! which is how every Wan2.x pipeline ships (diffusers `scheduling_unipc_multistep.py`: sigmas at
//! 428-449, predictor 833-960, corrector 962-1098).
//!
//! With flow sigmas `α(σ) = 1−σ` and `λ(σ) = ln α − ln σ`. The model predicts a velocity `v`; the
//! solver works on the data prediction `x0 = x − σ·v` (`predict_x0`). Orders above 2 need a general
//! linear solve that no Wan configuration uses, so `solver_order` is limited to 1 or 2.

use candle_core::{bail, Result, Tensor};
use serde::Deserialize;

use super::{np_linspace, shift_sigma, stretch_to_terminal, Scheduler};

/// `scheduler_config.json` of a `UniPCMultistepScheduler`; field defaults are diffusers' defaults.
/// Keys that only matter outside flow mode (betas, `timestep_spacing`, …) are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FlowUniPcConfig {
    pub num_train_timesteps: usize,
    pub solver_order: usize,
    pub prediction_type: String,
    pub thresholding: bool,
    pub predict_x0: bool,
    pub solver_type: String,
    pub lower_order_final: bool,
    pub disable_corrector: Vec<usize>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub flow_shift: f64,
    pub final_sigmas_type: String,
    pub use_dynamic_shifting: bool,
    pub shift_terminal: Option<f64>,
}

impl Default for FlowUniPcConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            solver_order: 2,
            prediction_type: "epsilon".into(),
            thresholding: false,
            predict_x0: true,
            solver_type: "bh2".into(),
            lower_order_final: true,
            disable_corrector: Vec::new(),
            use_karras_sigmas: Some(false),
            use_exponential_sigmas: Some(false),
            use_beta_sigmas: Some(false),
            use_flow_sigmas: Some(false),
            flow_shift: 1.0,
            final_sigmas_type: "zero".into(),
            use_dynamic_shifting: false,
            shift_terminal: None,
        }
    }
}

impl FlowUniPcConfig {
    /// Wan2.x's configuration (`convert_wan_to_diffusers.py`) with the given flow shift.
    pub fn wan(flow_shift: f64) -> Self {
        Self { prediction_type: "flow_prediction".into(), use_flow_sigmas: Some(true), flow_shift, ..Self::default() }
    }
}

/// Which B(h) the UniPC paper's variants use: `bh1` is `B(h) = h`, `bh2` is `B(h) = e^h − 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Bh1,
    Bh2,
}

/// The scheduler state: sigma/timestep tables plus the multistep history.
#[derive(Debug)]
pub struct FlowUniPcScheduler {
    cfg: FlowUniPcConfig,
    solver_type: SolverType,
    final_sigma_zero: bool,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// Data predictions of the latest steps, oldest first (at most `solver_order`).
    model_outputs: Vec<Tensor>,
    /// The sample the previous predictor started from (the corrector re-derives from it).
    last_sample: Option<Tensor>,
    lower_order_nums: usize,
    /// The predictor order used at the previous step; the corrector reuses it.
    this_order: usize,
    next_step: usize,
}

impl FlowUniPcScheduler {
    /// Validates that `cfg` describes the flow-mode solver this port implements.
    pub fn new(cfg: FlowUniPcConfig) -> Result<Self> {
        if cfg.use_flow_sigmas != Some(true) || cfg.prediction_type != "flow_prediction" {
            bail!(
                "UniPC is supported in flow mode only (use_flow_sigmas=true, prediction_type=\"flow_prediction\"), got use_flow_sigmas={:?}, prediction_type={:?}",
                cfg.use_flow_sigmas,
                cfg.prediction_type
            )
        }
        if !cfg.predict_x0 || cfg.thresholding {
            bail!("UniPC with predict_x0=false or thresholding=true is not supported")
        }
        for (name, on) in [
            ("use_karras_sigmas", cfg.use_karras_sigmas),
            ("use_exponential_sigmas", cfg.use_exponential_sigmas),
            ("use_beta_sigmas", cfg.use_beta_sigmas),
        ] {
            if on == Some(true) {
                bail!("UniPC `{name}` is not supported in flow mode by Tessera")
            }
        }
        if cfg.use_dynamic_shifting {
            bail!("UniPC use_dynamic_shifting needs a resolution-dependent `mu`, which Wan does not use; set a fixed flow_shift")
        }
        if !(1..=2).contains(&cfg.solver_order) {
            bail!("UniPC solver_order {} is not supported (1 or 2)", cfg.solver_order)
        }
        // diffusers maps the DPM-Solver names onto bh2 as well.
        let solver_type = match cfg.solver_type.as_str() {
            "bh1" => SolverType::Bh1,
            "bh2" | "midpoint" | "heun" | "logrho" => SolverType::Bh2,
            other => bail!("UniPC solver_type {other:?} is not supported (bh1 or bh2)"),
        };
        let final_sigma_zero = match cfg.final_sigmas_type.as_str() {
            "zero" => true,
            "sigma_min" => false,
            other => bail!("final_sigmas_type {other:?} must be \"zero\" or \"sigma_min\""),
        };
        if !(cfg.flow_shift.is_finite() && cfg.flow_shift > 0.0) {
            bail!("flow_shift must be a positive number, got {}", cfg.flow_shift)
        }
        if cfg.num_train_timesteps == 0 {
            bail!("num_train_timesteps must be positive")
        }
        Ok(Self {
            cfg,
            solver_type,
            final_sigma_zero,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: Vec::new(),
            last_sample: None,
            lower_order_nums: 0,
            this_order: 1,
            next_step: 0,
        })
    }

    pub fn config(&self) -> &FlowUniPcConfig {
        &self.cfg
    }

    /// `λ(σ) = ln(1−σ) − ln σ` in float32, as the torch code evaluates it on 0-dim tensors.
    fn lambda(sigma: f32) -> f32 {
        (1.0 - sigma).ln() - sigma.ln()
    }

    fn b_h(&self, hh: f32) -> f32 {
        match self.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        }
    }

    /// UniP: from the (corrected) sample `x` at step `k` to step `k+1`.
    fn predictor(&self, x: &Tensor, k: usize, order: usize) -> Result<Tensor> {
        let (m0, history) = match self.model_outputs.split_last() {
            Some(split) => split,
            None => bail!("UniPC predictor called without a model output"),
        };
        let (sigma_t, sigma_s0) = (self.sigmas[k + 1], self.sigmas[k]);
        if sigma_t == 0.0 {
            // σ = 0 makes λ = +∞ and expm1(−∞) = −1, α = 1: the update collapses to x0 itself.
            // Return it directly instead of trusting ∞ arithmetic.
            return Ok(m0.clone());
        }
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = Self::lambda(sigma_s0);
        let h = Self::lambda(sigma_t) - lambda_s0;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = self.b_h(hh);
        let x_t = (x.affine((sigma_t / sigma_s0) as f64, 0.0)? - m0.affine((alpha_t * h_phi_1) as f64, 0.0)?)?;
        if order == 1 {
            return Ok(x_t);
        }
        let Some(m1) = history.last() else { bail!("UniPC order-2 predictor needs the previous model output") };
        let rk = (Self::lambda(self.sigmas[k - 1]) - lambda_s0) / h;
        let d1 = (m1 - m0)?.affine(1.0 / rk as f64, 0.0)?;
        // The order-2 predictor uses the fixed ρ = 0.5 rather than solving for it.
        x_t - d1.affine((alpha_t * b_h * 0.5) as f64, 0.0)?
    }

    /// UniC: refines `this_sample` (the predictor's result for step `k`) with the fresh model
    /// output `model_t`, starting again from the previous step's sample.
    fn corrector(&self, model_t: &Tensor, last_sample: &Tensor, k: usize, order: usize) -> Result<Tensor> {
        let (m0, history) = match self.model_outputs.split_last() {
            Some(split) => split,
            None => bail!("UniPC corrector called without a previous model output"),
        };
        let (sigma_t, sigma_s0) = (self.sigmas[k], self.sigmas[k - 1]);
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = Self::lambda(sigma_s0);
        let h = Self::lambda(sigma_t) - lambda_s0;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = self.b_h(hh);
        let x_t_ =
            (last_sample.affine((sigma_t / sigma_s0) as f64, 0.0)? - m0.affine((alpha_t * h_phi_1) as f64, 0.0)?)?;
        let d1_t = (model_t - m0)?;
        let correction = if order == 1 {
            d1_t.affine(0.5, 0.0)?
        } else {
            let Some(m1) = history.last() else { bail!("UniPC order-2 corrector needs two previous model outputs") };
            let rk = (Self::lambda(self.sigmas[k - 2]) - lambda_s0) / h;
            let d1 = (m1 - m0)?.affine(1.0 / rk as f64, 0.0)?;
            // b_i = i!·h·φ_i(h)/B(h), built by the same recurrence as diffusers.
            let h_phi_k = h_phi_1 / hh - 1.0;
            let b1 = h_phi_k / b_h;
            let b2 = (h_phi_k / hh - 0.5) * 2.0 / b_h;
            // Solve [[1, 1], [rk, 1]]·ρ = [b1, b2].
            let rho0 = (b1 - b2) / (1.0 - rk);
            let rho1 = b1 - rho0;
            (d1.affine(rho0 as f64, 0.0)? + d1_t.affine(rho1 as f64, 0.0)?)?
        };
        x_t_ - correction.affine((alpha_t * b_h) as f64, 0.0)?
    }
}

impl Scheduler for FlowUniPcScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        if num_inference_steps == 0 {
            bail!("the number of inference steps must be at least 1")
        }
        let n_train = self.cfg.num_train_timesteps as f64;
        let mut sigmas: Vec<f64> = np_linspace(1.0, 1.0 / n_train, num_inference_steps + 1);
        sigmas.truncate(num_inference_steps);
        self.set_sigmas(&sigmas)
    }

    /// The flow branch of diffusers' `set_timesteps` on given sigmas (as a float64 array: the
    /// shift, the σ = 1 nudge and the integer timesteps as for its own linspace).
    fn set_sigmas(&mut self, given: &[f64]) -> Result<()> {
        if given.is_empty() {
            bail!("a custom schedule needs at least one sigma")
        }
        let n_train = self.cfg.num_train_timesteps as f64;
        let mut sigmas = given.to_vec();
        for s in sigmas.iter_mut() {
            *s = shift_sigma(self.cfg.flow_shift, *s);
        }
        if let Some(terminal) = self.cfg.shift_terminal.filter(|t| *t != 0.0) {
            stretch_to_terminal(&mut sigmas, terminal);
        }
        // σ = 1 exactly would make λ = ln 0; diffusers nudges it.
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        // Timesteps are truncated to int64 as numpy's astype does (σ0 ≈ 1 → 999, not 1000).
        self.timesteps = sigmas.iter().map(|s| (s * n_train).trunc() as i64 as f32).collect();
        let last = if self.final_sigma_zero { 0.0 } else { sigmas[sigmas.len() - 1] };
        self.sigmas = sigmas.iter().chain(std::iter::once(&last)).map(|&s| s as f32).collect();
        self.model_outputs.clear();
        self.last_sample = None;
        self.lower_order_nums = 0;
        self.this_order = 1;
        self.next_step = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        let n = self.timesteps.len();
        if n == 0 {
            bail!("UniPC step called before set_timesteps")
        }
        if step_index != self.next_step || step_index >= n {
            bail!(
                "UniPC is multistep and must be stepped in order: expected step {} of {n}, got {step_index}",
                self.next_step
            )
        }
        if model_output.shape() != sample.shape() {
            bail!("model output {:?} and sample {:?} differ in shape", model_output.shape(), sample.shape())
        }
        let k = step_index;
        // diffusers forms σ·v in the model's dtype; doing it in the sample's (f32) dtype is the
        // more accurate, accepted deviation.
        let model_output = model_output.to_dtype(sample.dtype())?;
        let x0 = (sample - model_output.affine(self.sigmas[k] as f64, 0.0)?)?;

        let use_corrector = k > 0 && !self.cfg.disable_corrector.contains(&(k - 1)) && self.last_sample.is_some();
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => self.corrector(&x0, last, k, self.this_order)?,
            _ => sample.clone(),
        };

        self.model_outputs.push(x0);
        if self.model_outputs.len() > self.cfg.solver_order {
            self.model_outputs.remove(0);
        }
        let order = if self.cfg.lower_order_final { self.cfg.solver_order.min(n - k) } else { self.cfg.solver_order };
        // Warm-up: no more history than steps taken so far.
        self.this_order = order.min(self.lower_order_nums + 1);

        let prev_sample = self.predictor(&sample, k, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.cfg.solver_order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        Ok(prev_sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_schedule_matches_diffusers() {
        // diffusers UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0, ...).set_timesteps(50):
        // timesteps start 999, 995, 991, 987, 982 and end 305, 244, 175, 96.
        let mut s = FlowUniPcScheduler::new(FlowUniPcConfig::wan(5.0)).expect("valid config");
        s.set_timesteps(50).expect("set_timesteps");
        let t = s.timesteps();
        assert_eq!(&t[..5], &[999.0, 995.0, 991.0, 987.0, 982.0]);
        assert_eq!(&t[46..], &[305.0, 244.0, 175.0, 96.0]);
        assert!((s.sigmas()[49] - 0.09678).abs() < 1e-5);
        assert_eq!(s.sigmas()[50], 0.0);
        // 21 of 50 steps are high-noise for the A14B boundary 875.
        assert_eq!(t.iter().filter(|&&x| x >= 875.0).count(), 21);
    }

    #[test]
    fn rejects_non_flow_configs() {
        let err = FlowUniPcScheduler::new(FlowUniPcConfig::default()).expect_err("epsilon mode is not supported");
        assert!(err.to_string().contains("flow mode"), "{err}");
        let cfg = FlowUniPcConfig { solver_order: 3, ..FlowUniPcConfig::wan(3.0) };
        assert!(FlowUniPcScheduler::new(cfg).is_err());
    }

    #[test]
    fn out_of_order_step_is_an_error() {
        let mut s = FlowUniPcScheduler::new(FlowUniPcConfig::wan(5.0)).expect("valid config");
        s.set_timesteps(3).expect("set_timesteps");
        let x = Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).expect("zeros");
        assert!(s.step(&x, 1, &x).is_err());
    }
}
