//! `WanPipeline` / `WanImageToVideoPipeline` on one device, exactly as diffusers runs them:
//! text-to-video, TI2V image-to-video (`expand_timesteps`: the image latent overwrites latent frame 0,
//! whose tokens get timestep 0), A14B image-to-video (mask + image latent concatenated to 36
//! channels), classifier-free guidance, and the A14B two-expert switch at `boundary_ratio`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::denoise::{run_loop, Condition, LoopSpec, NoisePredictor, PipelineProgress};
use super::request::{GenerateParams, ParamsError};
use super::sampling::{self, LatentStats};
use crate::model_spec::ModelSpec;
use crate::models::wan::transformer::WanTransformer3DModel;
use crate::models::wan::vae::{self, AutoencoderKLWan, VaeParts};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot load {component} from {path}: {msg}")]
    Load { component: &'static str, path: PathBuf, msg: String },
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Model(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, PipelineError>;

/// Prompt conditioning: UMT5 embeddings `(1, L, text_dim)` (zero-padded rows included).
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    pub prompt: Tensor,
    pub negative: Option<Tensor>,
}

/// Result of a generation: the video as diffusers' `output_type="pt"` and the final latents.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// `(B, F, 3, H, W)` f32 in [0, 1].
    pub video: Tensor,
    /// `(B, z, T, h, w)` f32, normalised latent space.
    pub latents: Tensor,
}

/// A loaded Wan pipeline folder.
pub struct WanPipeline {
    root: PathBuf,
    spec: ModelSpec,
    transformer: WanTransformer3DModel,
    transformer_2: Option<WanTransformer3DModel>,
    vae: AutoencoderKLWan,
    stats: LatentStats,
    device: Device,
    dtype: DType,
}

impl WanPipeline {
    /// Loads `root/{transformer,transformer_2?,vae}` in `dtype` on `device`.
    pub fn load(root: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let spec = ModelSpec::from_path(root).map_err(|e| PipelineError::Load {
            component: "model",
            path: root.to_path_buf(),
            msg: e.to_string(),
        })?;
        let load_dit = |name: &'static str| {
            WanTransformer3DModel::load(&root.join(name), dtype, device).map_err(|e| PipelineError::Load {
                component: name,
                path: root.join(name),
                msg: e.to_string(),
            })
        };
        let transformer = load_dit("transformer")?;
        let transformer_2 = if spec.two_experts() { Some(load_dit("transformer_2")?) } else { None };
        let vae = vae::load(root, VaeParts::Both, dtype, device).map_err(|e| PipelineError::Load {
            component: "vae",
            path: root.join("vae"),
            msg: e.to_string(),
        })?;
        let cfg = vae.config();
        let stats = LatentStats::new(&cfg.latents_mean, &cfg.latents_std, device)?;
        Ok(Self {
            root: root.to_path_buf(),
            spec,
            transformer,
            transformer_2,
            vae,
            stats,
            device: device.clone(),
            dtype,
        })
    }

    pub fn vae(&self) -> &AutoencoderKLWan {
        &self.vae
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Height/width must be multiples of this (VAE spatial factor × transformer patch).
    pub fn size_multiple(&self) -> usize {
        self.vae.config().scale_factor_spatial * self.transformer.config().patch_size[1]
    }

    /// Whether the transformer takes the image as extra channels (A14B / Wan2.1 I2V).
    fn channel_concat_i2v(&self) -> bool {
        self.transformer.config().in_channels != self.vae.config().z_dim
    }

    /// `image`: `(1, 3, H, W)` in [-1, 1] for image-to-video. `latents`: initial noise
    /// `(1, z, T, h, w)` (else drawn from `params.seed`).
    pub fn generate(
        &self,
        params: &GenerateParams,
        embeds: &PromptEmbeds,
        image: Option<&Tensor>,
        latents: Option<&Tensor>,
        progress: &mut dyn FnMut(PipelineProgress),
    ) -> Result<GenerateOutput> {
        params.validate(self.size_multiple())?;
        let vcfg = self.vae.config();
        let shape = latent_shape(params, vcfg.scale_factor_spatial, vcfg.z_dim);
        let cfg_on = params.guidance > 1.0;
        let negative = negative_embeds(embeds, cfg_on)?.map(|n| n.to_dtype(self.dtype)).transpose()?;
        let prompt = embeds.prompt.to_dtype(self.dtype)?;
        if self.channel_concat_i2v() && image.is_none() {
            return Err(PipelineError::Input(format!(
                "this transformer takes {} input channels (image-to-video): pass --image",
                self.transformer.config().in_channels
            )));
        }
        let latents = initial_latents(params, &shape, latents, &self.device)?;

        let condition = match image {
            Some(img) => {
                progress(PipelineProgress::EncodingImage);
                Some(self.image_condition(img, params)?)
            }
            None => None,
        };

        let mut sched = params.scheduler(&self.root.join("scheduler")).map_err(|e| PipelineError::Load {
            component: "scheduler",
            path: self.root.join("scheduler"),
            msg: e.to_string(),
        })?;
        let spec = LoopSpec::new(&self.spec, params, self.dtype);
        let experts: Vec<&WanTransformer3DModel> =
            std::iter::once(&self.transformer).chain(self.transformer_2.as_ref()).collect();
        let mut predictor = LocalPredictor { experts, prompt: &prompt, negative: negative.as_ref() };
        let latents = run_loop(&spec, sched.as_mut(), latents, condition.as_ref(), &mut predictor, &mut |p| {
            progress(p);
            Ok(())
        })?;
        progress(PipelineProgress::Decoding);
        let video = self.decode(&latents)?;
        Ok(GenerateOutput { video, latents })
    }

    /// Normalised latents → video `(B, F, 3, H, W)` in [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = self.stats.denormalize(&latents.to_dtype(DType::F32)?)?;
        let video = self.vae.decode(&z, None, &mut |_| {})?;
        Ok(sampling::video_to_unit_range(&video)?)
    }

    fn image_condition(&self, image: &Tensor, params: &GenerateParams) -> Result<Condition> {
        image_condition(&self.vae, &self.stats, self.spec.index.expand_timesteps, image, params)
    }
}

/// `(1, z, T, h, w)` latents of a request for a VAE with spatial factor `spatial` and `z` channels.
pub fn latent_shape(params: &GenerateParams, spatial: usize, z: usize) -> [usize; 5] {
    [1, z, params.latent_frames(), params.height / spatial, params.width / spatial]
}

/// The negative embeddings CFG uses (`None` without CFG); CFG without them is an input error.
pub fn negative_embeds(embeds: &PromptEmbeds, cfg_on: bool) -> Result<Option<&Tensor>> {
    match (&embeds.negative, cfg_on) {
        (Some(n), true) => Ok(Some(n)),
        (_, false) => Ok(None),
        (None, true) => Err(PipelineError::Input(
            "guidance > 1 needs negative prompt embeddings: pass --negative-prompt or --negative-prompt-embeds (or --guidance 1)".into(),
        )),
    }
}

/// The given initial noise (checked against `shape`) or seeded noise, f32 on `device`.
pub fn initial_latents(
    params: &GenerateParams,
    shape: &[usize; 5],
    given: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    match given {
        Some(l) if l.dims() != shape => {
            Err(PipelineError::Input(format!("--latents has shape {:?}, this size needs {shape:?}", l.dims())))
        }
        Some(l) => Ok(l.to_device(device)?.to_dtype(DType::F32)?),
        None => Ok(sampling::initial_noise(params.seed, shape, device)?),
    }
}

/// Encodes the I2V image `(1, 3, H, W)` in [-1, 1] into the conditioning of the pipeline's mode:
/// TI2V (`expand_timesteps`) encodes the image alone; A14B / Wan2.1 I2V encode the image followed by
/// F−1 zero (mid-grey) frames. The result lives on `device`.
pub fn image_condition(
    vae: &AutoencoderKLWan,
    stats: &LatentStats,
    expand_timesteps: bool,
    image: &Tensor,
    params: &GenerateParams,
) -> Result<Condition> {
    let video = condition_video(expand_timesteps, image, params)?;
    let mean = vae.encode(&video, None, &mut |_| {})?.mean;
    condition_from_mean(stats, expand_timesteps, &mean, params)
}

/// The video the VAE encodes for image conditioning `(1, 3, F', H, W)`: the image alone (TI2V,
/// `expand_timesteps`) or the image followed by F−1 zero frames (A14B).
pub fn condition_video(expand_timesteps: bool, image: &Tensor, params: &GenerateParams) -> Result<Tensor> {
    let (_, c, h, w) = image.dims4()?;
    if c != 3 || h != params.height || w != params.width {
        return Err(PipelineError::Input(format!(
            "image tensor {:?} must be (1, 3, {}, {}) after preprocessing",
            image.dims(),
            params.height,
            params.width
        )));
    }
    let image = image.unsqueeze(2)?.to_dtype(DType::F32)?; // (1, 3, 1, H, W)
    Ok(if expand_timesteps {
        image
    } else {
        let zeros = Tensor::zeros((1, 3, params.frames - 1, params.height, params.width), DType::F32, image.device())?;
        Tensor::cat(&[&image, &zeros], 2)?
    })
}

/// The condition from the encoder's mean of [`condition_video`] (normalised with `stats`).
pub fn condition_from_mean(
    stats: &LatentStats,
    expand_timesteps: bool,
    mean: &Tensor,
    params: &GenerateParams,
) -> Result<Condition> {
    let latent = stats.normalize(&mean.to_device(stats.device())?)?;
    Ok(if expand_timesteps {
        Condition::first_frame(latent, params.latent_frames())?
    } else {
        Condition::channels(&latent)?
    })
}

/// The single-device [`NoisePredictor`]: both CFG branches in turn on the resident experts.
struct LocalPredictor<'a> {
    experts: Vec<&'a WanTransformer3DModel>,
    prompt: &'a Tensor,
    negative: Option<&'a Tensor>,
}

impl NoisePredictor for LocalPredictor<'_> {
    fn predict(
        &mut self,
        expert: usize,
        input: &Tensor,
        timestep: &Tensor,
        guidance: Option<f64>,
    ) -> candle_core::Result<Tensor> {
        let Some(model) = self.experts.get(expert) else {
            candle_core::bail!("expert {expert} is not loaded ({} experts)", self.experts.len())
        };
        let cond = model.forward(input, timestep, self.prompt)?;
        match (guidance, self.negative) {
            (Some(g), Some(neg)) => {
                let uncond = model.forward(input, timestep, neg)?;
                sampling::guidance(&cond, &uncond, g)
            }
            _ => Ok(cond),
        }
    }
}
