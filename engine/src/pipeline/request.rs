//! What a generation asks for, and its validation against the model (sizes the model can take,
//! with errors that name the nearest valid values instead of silently rounding like diffusers).

use serde::{Deserialize, Serialize};

use crate::fields::{render, Audience, Field};
use crate::model_spec::{Family, ModelSpec};
use crate::parallel::plan::{ParallelPlan, PlanError, PlanModel, VaeMode};
use crate::scheduler::{self, Scheduler, SchedulerError, SchedulerKind};

/// Size, schedule and guidance of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    /// CFG scale (of the high-noise expert for A14B); CFG runs when it is > 1.
    pub guidance: f64,
    /// CFG scale of the low-noise expert (A14B); defaults to `guidance`.
    pub guidance_2: Option<f64>,
    /// Overrides the scheduler's `flow_shift`/`shift`.
    pub shift: Option<f64>,
    /// Seed of the initial noise (see [`super::sampling::initial_noise`]).
    pub seed: u64,
    /// The sampler; `None`: the one the model's `scheduler_config.json` names.
    #[serde(default)]
    pub scheduler: Option<SchedulerKind>,
    /// A custom schedule, one sigma per step before the shift (`shift` applies); `None`: the
    /// scheduler's own spacing.
    #[serde(default)]
    pub sigmas: Option<Vec<f64>>,
}

/// A request the model cannot take, with the nearest valid values. Messages are
/// [`crate::fields`] templates (render them for the CLI or the studio).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    #[error("«frames» {got} is not of the form 4k+1; nearest valid: {below} or {above}")]
    Frames { got: usize, below: usize, above: usize },
    #[error("«{axis}» {got} is not a multiple of {multiple} for this model; nearest valid: {below} or {above}")]
    Size { axis: &'static str, got: usize, multiple: usize, below: usize, above: usize },
    #[error("«steps» must be at least 1")]
    Steps,
    #[error("«guidance» {0} must be a finite number ≥ 0")]
    Guidance(f64),
    #[error("«sigmas» gives {got} values but «steps» is {steps}: give one sigma per step")]
    SigmasCount { got: usize, steps: usize },
    #[error("«sigmas» {0} (e.g. 1,0.75,0.5,0.25)")]
    Sigmas(String),
}

impl ParamsError {
    /// The field the message is about.
    pub fn field(&self) -> Field {
        match self {
            Self::Frames { .. } => Field::Frames,
            Self::Size { axis: "width", .. } => Field::Width,
            Self::Size { .. } => Field::Height,
            Self::Steps => Field::Steps,
            Self::Guidance(_) => Field::Guidance,
            Self::SigmasCount { .. } | Self::Sigmas(_) => Field::Sigmas,
        }
    }
}

impl GenerateParams {
    /// `multiple`: VAE spatial factor × transformer patch (16 for the Wan2.1 VAE, 32 for Wan2.2).
    pub fn validate(&self, multiple: usize) -> Result<(), ParamsError> {
        if self.frames == 0 || !(self.frames - 1).is_multiple_of(4) {
            let below = if self.frames == 0 { 1 } else { (self.frames - 1) / 4 * 4 + 1 };
            return Err(ParamsError::Frames { got: self.frames, below, above: below + 4 });
        }
        for (axis, got) in [("height", self.height), ("width", self.width)] {
            if got == 0 || got % multiple != 0 {
                let below = (got / multiple * multiple).max(multiple);
                let above = got.div_ceil(multiple).max(1) * multiple;
                let above = if above == below { above + multiple } else { above };
                return Err(ParamsError::Size { axis, got, multiple, below, above });
            }
        }
        if self.steps == 0 {
            return Err(ParamsError::Steps);
        }
        for g in [Some(self.guidance), self.guidance_2].into_iter().flatten() {
            if !g.is_finite() || g < 0.0 {
                return Err(ParamsError::Guidance(g));
            }
        }
        if let Some(sigmas) = &self.sigmas {
            scheduler::check_sigmas(sigmas).map_err(ParamsError::Sigmas)?;
            if sigmas.len() != self.steps {
                return Err(ParamsError::SigmasCount { got: sigmas.len(), steps: self.steps });
            }
        }
        Ok(())
    }

    /// The scheduler of this request (`scheduler`, else the one the parsed `scheduler_config.json`
    /// names; `origin`: where it came from, for messages) with its tables set for `steps` (or
    /// `sigmas`): the one place every pipeline builds it.
    pub fn scheduler(
        &self,
        config: serde_json::Value,
        origin: &std::path::Path,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let mut sched = scheduler::from_config(config, origin, self.scheduler, self.shift)?;
        scheduler::set_schedule(sched.as_mut(), self.steps, self.sigmas.as_deref())
            .map_err(|e| SchedulerError::Unsupported { path: origin.to_path_buf(), msg: e.to_string() })?;
        Ok(sched)
    }

    /// [`GenerateParams::scheduler`] from a folder holding `scheduler_config.json` (or its
    /// `scheduler/` subfolder).
    pub fn scheduler_in(&self, dir: &std::path::Path) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let (config, path) = scheduler::read_config(dir)?;
        self.scheduler(config, &path)
    }

    /// Whether classifier-free guidance runs (two branches per step): guidance above 1.
    pub fn cfg(&self) -> bool {
        self.guidance > 1.0
    }

    /// Latent frames for the VAE's 4× temporal compression.
    pub fn latent_frames(&self) -> usize {
        (self.frames - 1) / 4 + 1
    }
}

/// The scheduler of a run of `model` (`origin`: where its config came from, for messages):
/// [`GenerateParams::scheduler`], except that HunyuanVideo 1.5's pipelines always pass custom sigmas
/// `linspace(1, 0, N+1)[:-1]` (shifted once) where a request gives none — what diffusers'
/// `HunyuanVideo15Pipeline.__call__` does, unlike `set_timesteps(N)`.
pub fn schedule(
    model: &ModelSpec,
    params: &GenerateParams,
    origin: &std::path::Path,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    if model.family == Family::HunyuanVideo15 && params.sigmas.is_none() {
        let sigmas = Some(crate::scheduler::flow_match_euler::linear_sigmas(params.steps));
        return GenerateParams { sigmas, ..params.clone() }.scheduler(model.scheduler_config.clone(), origin);
    }
    params.scheduler(model.scheduler_config.clone(), origin)
}

/// Why a request cannot run on a model: the field to change and a message naming a valid value.
/// `Display` words it for the studio (labels); [`RequestError::cli`] for the terminal (flags).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", render(.template, Audience::Gui))]
pub struct RequestError {
    pub field: Field,
    /// A [`crate::fields`] template.
    pub template: String,
}

impl RequestError {
    pub fn new(field: Field, template: impl Into<String>) -> Self {
        Self { field, template: template.into() }
    }

    /// The message with CLI flag names.
    pub fn cli(&self) -> String {
        render(&self.template, Audience::Cli)
    }
}

impl From<ParamsError> for RequestError {
    fn from(e: ParamsError) -> Self {
        Self::new(e.field(), e.to_string())
    }
}

impl From<PlanError> for RequestError {
    fn from(e: PlanError) -> Self {
        Self::new(e.field(), e.to_string())
    }
}

/// Checks what the model and the plan constrain in a request — sizes, frames, steps, guidance, the
/// plan's arithmetic against the heads, a halo decode's rows, the input image — with one set of
/// messages. The engine's front door calls it before any worker starts; the workers call it again
/// (a request can reach them without the front door, e.g. a benchmark).
pub fn check(model: &ModelSpec, params: &GenerateParams, plan: &ParallelPlan, image: bool) -> Result<(), RequestError> {
    params.validate(model.size_multiple())?;
    plan.validate(PlanModel { num_heads: model.num_heads(), cfg: params.cfg() })?;
    let latent_rows = params.height / model.vae.scale_factor_spatial;
    if plan.vae_mode == VaeMode::Halo && plan.vae_parallel > latent_rows {
        return Err(RequestError::new(
            Field::VaeParallel,
            format!(
                "a halo decode over {n} ranks needs at least {n} latent rows; «height» {} has {latent_rows} (raise «height» or lower «vae-parallel»)",
                params.height,
                n = plan.vae_parallel,
            ),
        ));
    }
    if model.requires_image() && !image {
        return Err(RequestError::new(
            Field::Image,
            format!(
                "this model ({}) is image-to-video: its transformer takes {} input channels; pass «image»",
                model.variant.describe(),
                model.transformer.in_channels
            ),
        ));
    }
    if image && !model.accepts_image() {
        return Err(RequestError::new(
            Field::Image,
            format!("this model ({}) is text-to-video only: drop the «image»", model.variant.describe()),
        ));
    }
    if params.guidance_2.is_some() && !model.two_experts() {
        return Err(RequestError::new(
            Field::Guidance2,
            "«guidance-2» is the low-noise expert's scale and this model has one expert: drop it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(height: usize, width: usize, frames: usize) -> GenerateParams {
        GenerateParams {
            height,
            width,
            frames,
            steps: 4,
            guidance: 5.0,
            guidance_2: None,
            shift: None,
            seed: 0,
            scheduler: None,
            sigmas: None,
        }
    }

    #[test]
    fn errors_name_the_nearest_valid_values() {
        assert!(params(704, 1280, 121).validate(32).is_ok());
        assert_eq!(
            params(720, 1280, 121).validate(32).unwrap_err().to_string(),
            "«height» 720 is not a multiple of 32 for this model; nearest valid: 704 or 736"
        );
        assert_eq!(
            params(704, 1280, 120).validate(32).unwrap_err().to_string(),
            "«frames» 120 is not of the form 4k+1; nearest valid: 117 or 121"
        );
        assert!(params(720, 1280, 81).validate(16).is_ok());
        assert!(params(96, 100, 9).validate(16).unwrap_err().to_string().contains("96 or 112"));
    }

    fn golden() -> ModelSpec {
        ModelSpec::from_path(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/golden/pipeline"
        )))
        .unwrap()
    }

    #[test]
    fn check_speaks_flags_to_the_cli_and_labels_to_the_studio() {
        let model = golden();
        let plan = ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 2, ..ParallelPlan::default() };
        assert!(check(&model, &params(192, 256, 9), &plan, false).is_ok());
        let e = check(&model, &params(200, 256, 9), &plan, false).unwrap_err();
        assert_eq!(e.field, Field::Height);
        assert_eq!(e.to_string(), "Height 200 is not a multiple of 32 for this model; nearest valid: 192 or 224");
        assert_eq!(e.cli(), "--height 200 is not a multiple of 32 for this model; nearest valid: 192 or 224");
        let bad = ParallelPlan { ulysses: 1, ..plan };
        let e = check(&model, &params(192, 256, 9), &bad, false).unwrap_err();
        assert!(e.to_string().starts_with("Ulysses 1 × CFG parallel 1 = 1 ≠ Ranks 2"), "{e}");
        assert!(e.cli().starts_with("--ulysses 1 × --cfg-parallel 1 = 1 ≠ --ranks 2"), "{}", e.cli());
        let wide = ParallelPlan { ranks: 4, ulysses: 4, vae_parallel: 4, ..plan };
        let e = check(&model, &params(32, 256, 9), &wide, false).unwrap_err();
        assert!(e.to_string().contains("at least 4 latent rows") && e.field == Field::VaeParallel, "{e}");
        let mut two = params(192, 256, 9);
        two.guidance_2 = Some(3.0);
        assert_eq!(check(&model, &two, &plan, false).unwrap_err().field, Field::Guidance2);
    }
}
