//! The denoising loop shared by the single-device pipeline and the sharded worker job: timesteps,
//! expert choice at `boundary_ratio`, the model input of each mode (TI2V first-frame blend with
//! per-token timesteps, A14B channel concat), scheduler steps and progress.
//!
//! *How* a noise prediction is computed (one device, or CFG branches, sequence shards and gathered
//! weights across ranks) is behind [`NoisePredictor`]; the loop itself is the same code everywhere,
//! so a sharded run can only differ from a single-device one inside the predictor.

use candle_core::{DType, Device, Result, Tensor};

use super::request::GenerateParams;
use super::{preview, sampling};
use crate::model_spec::ModelSpec;
use crate::scheduler::Scheduler;

/// Progress of one generation: the loop here reports the steps, the pipelines around it the
/// image encode before and the decode after.
#[derive(Debug, Clone)]
pub enum PipelineProgress {
    EncodingImage,
    /// Denoising step `index` of `total` finished (`expert` 1 or 2).
    Step {
        index: usize,
        total: usize,
        timestep: f32,
        expert: u8,
    },
    /// The x0 estimate `(1, z, T, h, w)` f32 of step `index` (`x − σ·v`, the first frame blended
    /// back for TI2V image-to-video), every [`LoopSpec::preview_every`]-th step, before `Step`.
    Preview {
        index: usize,
        total: usize,
        x0: Tensor,
    },
    Decoding,
}

/// Computes the model's noise prediction for one step.
pub trait NoisePredictor {
    /// Prediction of `expert` (0: the only or high-noise expert, 1: A14B's low-noise expert) for
    /// `input` `(1, C, T, h, w)` in the run dtype at `timestep` (`(1,)` or per token `(1, L)`).
    /// `guidance: Some(g)`: `uncond + g·(cond − uncond)` from the prompt and the negative prompt;
    /// `None`: the conditional prediction only. Every rank must return the same tensor.
    fn predict(&mut self, expert: usize, input: &Tensor, timestep: &Tensor, guidance: Option<f64>) -> Result<Tensor>;
}

/// Image conditioning of the two I2V flavours.
#[derive(Debug, Clone)]
pub enum Condition {
    /// TI2V: the image latent `(1, z, 1, h, w)` replaces latent frame 0 (`mask` is 0 there).
    FirstFrame { latent: Tensor, mask: Tensor },
    /// A14B: `(1, 4 + z, T, h, w)` concatenated after the latents on the channel axis.
    Channels(Tensor),
}

impl Condition {
    /// The TI2V first-frame condition from the normalised image latent `(1, z, 1, h, w)`.
    pub fn first_frame(latent: Tensor, latent_frames: usize) -> Result<Self> {
        let (_, _, _, lh, lw) = latent.dims5()?;
        let mut mask = vec![1f32; latent_frames * lh * lw];
        mask[..lh * lw].iter_mut().for_each(|m| *m = 0.0);
        let mask = Tensor::from_vec(mask, (1, 1, latent_frames, lh, lw), latent.device())?;
        Ok(Self::FirstFrame { latent, mask })
    }

    /// The A14B condition from the normalised latent of the image followed by zero frames
    /// `(1, z, T, h, w)`: a 4-channel mask marking latent frame 0 as given, then the latent.
    pub fn channels(latent: &Tensor) -> Result<Self> {
        let (_, _, t, lh, lw) = latent.dims5()?;
        let mut mask = vec![0f32; 4 * t * lh * lw];
        for ch in 0..4 {
            mask[ch * t * lh * lw..ch * t * lh * lw + lh * lw].iter_mut().for_each(|m| *m = 1.0);
        }
        let mask = Tensor::from_vec(mask, (1, 4, t, lh, lw), latent.device())?;
        Ok(Self::Channels(Tensor::cat(&[&mask, latent], 1)?))
    }

    /// The tensor that carries the image (what a rank that encoded it shares with the others).
    pub fn payload(&self) -> &Tensor {
        match self {
            Self::FirstFrame { latent, .. } => latent,
            Self::Channels(c) => c,
        }
    }
}

/// `(1 − m)·condition + m·latents`, broadcasting the one-frame condition over time.
pub fn blend_first_frame(latent: &Tensor, mask: &Tensor, latents: &Tensor) -> Result<Tensor> {
    let keep = mask.broadcast_mul(latents)?;
    let given = (1.0 - mask)?.broadcast_mul(latent)?;
    given + keep
}

/// What the loop needs to know about the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct LoopSpec {
    /// `model_index.json` `expand_timesteps` (TI2V: per-token timesteps, frame 0 at t = 0 for I2V).
    pub expand_timesteps: bool,
    /// `boundary_ratio · 1000` when the pipeline has a low-noise expert (A14B).
    pub boundary: Option<f64>,
    pub has_expert_2: bool,
    /// Transformer patch `(pt, ph, pw)`.
    pub patch: [usize; 3],
    /// CFG scale of expert 0 / expert 1, `None` when CFG is off.
    pub guidance: Option<(f64, f64)>,
    /// Run dtype of the transformer input.
    pub dtype: DType,
    /// Report the x0 estimate every k-th step ([`PipelineProgress::Preview`]); `None`: never.
    pub preview_every: Option<usize>,
}

impl LoopSpec {
    /// The loop of `model` for `params`, in `dtype`.
    pub fn new(model: &ModelSpec, params: &GenerateParams, dtype: DType) -> Self {
        Self {
            expand_timesteps: model.index.expand_timesteps,
            boundary: model.boundary_timestep(),
            has_expert_2: model.two_experts(),
            patch: model.transformer.patch_size,
            guidance: params.cfg().then(|| (params.guidance, params.guidance_2.unwrap_or(params.guidance))),
            dtype,
            preview_every: None,
        }
    }
}

impl LoopSpec {
    /// The expert that predicts at timestep `t`: 1 (the low-noise one) below the boundary, else 0.
    pub fn expert_at(&self, t: f32) -> usize {
        usize::from(self.has_expert_2 && self.boundary.is_some_and(|b| (t as f64) < b))
    }
}

/// Runs every step of `sched` on `latents` (f32, `(1, z, T, h, w)`) and returns the final latents
/// (with the first frame blended back for TI2V I2V). `progress` may stop the loop with an error
/// (e.g. a cancel).
pub fn run_loop(
    spec: &LoopSpec,
    sched: &mut dyn Scheduler,
    mut latents: Tensor,
    condition: Option<&Condition>,
    predictor: &mut dyn NoisePredictor,
    progress: &mut dyn FnMut(PipelineProgress) -> Result<()>,
) -> Result<Tensor> {
    let timesteps = sched.timesteps().to_vec();
    let (_, _, nt, nh, nw) = latents.dims5()?;
    let device: Device = latents.device().clone();
    for (i, &t) in timesteps.iter().enumerate() {
        let expert = spec.expert_at(t);
        let low_noise = expert == 1;
        let input = model_input(spec, t, &latents, condition, (nt, nh, nw), &device)?;
        let guidance = spec.guidance.map(|(g1, g2)| if low_noise { g2 } else { g1 });
        let noise =
            predictor.predict(expert, &input.0.to_dtype(spec.dtype)?, &input.1, guidance)?.to_dtype(DType::F32)?;
        if spec.preview_every.is_some_and(|k| k > 0 && (i + 1) % k == 0) {
            let mut x0 = preview::x0_estimate(&latents, &noise, sched.sigmas()[i])?;
            if let Some(Condition::FirstFrame { latent, mask }) = condition {
                x0 = blend_first_frame(latent, mask, &x0)?;
            }
            progress(PipelineProgress::Preview { index: i, total: timesteps.len(), x0 })?;
        }
        latents = sched.step(&noise, i, &latents)?;
        progress(PipelineProgress::Step { index: i, total: timesteps.len(), timestep: t, expert: expert as u8 + 1 })?;
    }
    if let Some(Condition::FirstFrame { latent, mask }) = condition {
        latents = blend_first_frame(latent, mask, &latents)?;
    }
    Ok(latents)
}

/// The transformer input and timestep of one step.
fn model_input(
    spec: &LoopSpec,
    t: f32,
    latents: &Tensor,
    condition: Option<&Condition>,
    grid: (usize, usize, usize),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let patch = (spec.patch[1], spec.patch[2]);
    Ok(match (condition, spec.expand_timesteps) {
        (Some(Condition::FirstFrame { latent, mask }), true) => {
            (blend_first_frame(latent, mask, latents)?, sampling::per_token_timesteps(t, grid, patch, true, device)?)
        }
        (None, true) => (latents.clone(), sampling::per_token_timesteps(t, grid, patch, false, device)?),
        (Some(Condition::Channels(c)), false) => (Tensor::cat(&[latents, c], 1)?, Tensor::new(&[t], device)?),
        (None, false) => (latents.clone(), Tensor::new(&[t], device)?),
        _ => candle_core::bail!("image conditioning does not match this pipeline's mode (expand_timesteps)"),
    })
}
