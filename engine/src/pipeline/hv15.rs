//! `HunyuanVideo15Pipeline` (text-to-video) on one device, exactly as diffusers runs it when the
//! prompt embeddings are given: FlowMatchEuler with the pipeline's custom sigmas
//! (`linspace(1, 0, N+1)[:-1]`, shifted once), classifier-free guidance through the guider
//! (`uncond + g·(cond − uncond)`; g = 1 runs one forward per step), the transformer input
//! `[latents, zero cond latents, zero mask]`, then `decode(latents / scaling_factor)` mapped to
//! [0, 1]. The single-device reference the tests hold the workers' generate job against (the job
//! runs the same steps through `pipeline::denoise::run_loop` and `pipeline::sharded::Expert`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::models::hv15::transformer::{self, Context, HunyuanVideo15Transformer3DModel};
use crate::models::hv15::vae::{self, AutoencoderKLHunyuanVideo15};
use crate::models::wan::vae::{Tiling, VaeParts};
use crate::scheduler::flow_match_euler::linear_sigmas;
use crate::scheduler::{FlowMatchEulerConfig, FlowMatchEulerScheduler, Scheduler};

#[derive(Debug, thiserror::Error)]
pub enum Hv15PipelineError {
    #[error("cannot load {component} from {path}: {msg}")]
    Load { component: &'static str, path: PathBuf, msg: String },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Model(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, Hv15PipelineError>;

/// One prompt's conditioning, valid rows only: MLLM states `[N, text_dim]` and, when the prompt
/// has quoted text, ByT5 states `[M, glyph_dim]`.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    pub text: Tensor,
    pub glyph: Option<Tensor>,
}

impl PromptEmbeds {
    fn context(&self) -> Context<'_> {
        Context { text: &self.text, glyph: self.glyph.as_ref(), image: None }
    }
}

/// `guider/guider_config.json` (`ClassifierFreeGuidance`): the fields the pipeline reads.
#[derive(Debug, Clone, serde::Deserialize)]
struct GuiderConfig {
    #[serde(default = "default_guidance")]
    guidance_scale: f64,
}

fn default_guidance() -> f64 {
    7.5
}

/// A loaded HunyuanVideo 1.5 pipeline folder (transformer, vae, scheduler, guider).
pub struct Hv15Pipeline {
    transformer: HunyuanVideo15Transformer3DModel,
    vae: AutoencoderKLHunyuanVideo15,
    scheduler: FlowMatchEulerConfig,
    /// The folder's guider scale (used when a run does not give one).
    pub guidance_scale: f64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, component: &'static str) -> Result<T> {
    let load = |msg: String| Hv15PipelineError::Load { component, path: path.to_path_buf(), msg };
    let text = std::fs::read_to_string(path).map_err(|e| load(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| load(e.to_string()))
}

impl Hv15Pipeline {
    pub fn load(root: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let transformer = transformer::load(&root.join("transformer"), dtype, device).map_err(|e| {
            Hv15PipelineError::Load { component: "transformer", path: root.join("transformer"), msg: e.to_string() }
        })?;
        let vae = vae::load(root, VaeParts::Decoder, DType::F32, device).map_err(|e| Hv15PipelineError::Load {
            component: "vae",
            path: root.join("vae"),
            msg: e.to_string(),
        })?;
        let scheduler = read_json(&root.join("scheduler/scheduler_config.json"), "scheduler")?;
        let guider: GuiderConfig = read_json(&root.join("guider/guider_config.json"), "guider")?;
        Ok(Self { transformer, vae, scheduler, guidance_scale: guider.guidance_scale })
    }

    pub fn transformer(&self) -> &HunyuanVideo15Transformer3DModel {
        &self.transformer
    }

    /// The schedule of `steps` steps (`shift` overrides the folder's): timesteps and sigmas.
    pub fn scheduler(&self, steps: usize, shift: Option<f64>) -> Result<FlowMatchEulerScheduler> {
        let cfg = FlowMatchEulerConfig { shift: shift.unwrap_or(self.scheduler.shift), ..self.scheduler.clone() };
        let mut s = FlowMatchEulerScheduler::new(cfg)?;
        s.set_sigmas(&linear_sigmas(steps))?;
        Ok(s)
    }

    /// The T2V denoise loop from `latents` `[1, z, T, h, w]`: final latents (not divided by the
    /// scaling factor). `negative` is needed when `guidance` ≠ 1.
    pub fn denoise_t2v(
        &self,
        latents: &Tensor,
        steps: usize,
        guidance: f64,
        shift: Option<f64>,
        prompt: &PromptEmbeds,
        negative: Option<&PromptEmbeds>,
    ) -> Result<Tensor> {
        let (b, z, t, h, w) = latents.dims5()?;
        let cfg = self.transformer.config();
        if b != 1 || cfg.in_channels != 2 * z + 1 || cfg.out_channels != z {
            return Err(Hv15PipelineError::Input(format!(
                "latents {:?} do not fit this transformer (batch 1, {} latent channels in 2·z + 1 = {} inputs)",
                latents.dims(),
                cfg.out_channels,
                cfg.in_channels
            )));
        }
        let cfg_on = (guidance - 1.0).abs() > 1e-12;
        let negative = match (cfg_on, negative) {
            (true, None) => {
                return Err(Hv15PipelineError::Input(format!(
                    "guidance {guidance} needs negative prompt embeddings (guidance 1 runs without)"
                )))
            }
            (_, n) => n,
        };
        let mut sched = self.scheduler(steps, shift)?;
        let cond_and_mask = Tensor::zeros((1, z + 1, t, h, w), latents.dtype(), latents.device())?;
        let mut x = latents.clone();
        for i in 0..steps {
            let ts = Tensor::new(&[sched.timesteps()[i]], latents.device())?;
            let input = Tensor::cat(&[&x, &cond_and_mask], 1)?;
            let cond = self.transformer.forward(&input, &ts, None, &[prompt.context()])?;
            let pred = match negative.filter(|_| cfg_on) {
                Some(neg) => {
                    let uncond = self.transformer.forward(&input, &ts, None, &[neg.context()])?;
                    (&uncond + ((cond - &uncond)? * guidance)?)?
                }
                None => cond,
            };
            x = sched.step(&pred, i, &x)?;
        }
        Ok(x)
    }

    /// `output_type="pt"`: `clamp(decode(latents / scaling_factor) / 2 + 0.5, 0, 1)` as
    /// `(B, F, 3, H, W)`.
    pub fn decode(&self, latents: &Tensor, tiling: Option<&Tiling>) -> Result<Tensor> {
        let z = (latents / self.vae.config().scaling_factor)?;
        let video = self.vae.decode(&z, tiling, &mut |_| {})?;
        Ok(((video / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.permute((0, 2, 1, 3, 4))?.contiguous()?)
    }
}
