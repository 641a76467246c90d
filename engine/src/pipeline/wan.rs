//! `WanPipeline` / `WanImageToVideoPipeline` on one device, exactly as diffusers runs them:
//! text-to-video, TI2V image-to-video (`expand_timesteps`: the image latent overwrites latent frame 0,
//! whose tokens get timestep 0), A14B image-to-video (mask + image latent concatenated to 36
//! channels), classifier-free guidance, and the A14B two-expert switch at `boundary_ratio`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::request::{GenerateParams, ParamsError};
use super::sampling::{self, LatentStats};
use crate::models::wan::transformer::WanTransformer3DModel;
use crate::models::wan::vae::{self, AutoencoderKLWan, VaeParts};
use crate::scheduler;

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

/// The fields of `model_index.json` the pipelines read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(default)]
    pub boundary_ratio: Option<f64>,
    #[serde(default)]
    pub expand_timesteps: bool,
    #[serde(default)]
    pub transformer_2: Option<serde_json::Value>,
}

impl ModelIndex {
    pub fn read(root: &Path) -> Result<Self> {
        let path = root.join("model_index.json");
        let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::Load {
            component: "model_index.json",
            path: path.clone(),
            msg: format!("{e}; --model must be a diffusers pipeline folder"),
        })?;
        serde_json::from_str(&text).map_err(|e| PipelineError::Load {
            component: "model_index.json",
            path,
            msg: e.to_string(),
        })
    }

    fn has_transformer_2(&self) -> bool {
        matches!(&self.transformer_2, Some(serde_json::Value::Array(a)) if a.first().is_some_and(|v| !v.is_null()))
    }
}

/// Prompt conditioning: UMT5 embeddings `(1, L, text_dim)` (zero-padded rows included).
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    pub prompt: Tensor,
    pub negative: Option<Tensor>,
}

/// Progress of one generation.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineProgress {
    EncodingImage,
    /// Denoising step `index` of `total` finished (`expert` 1 or 2).
    Step {
        index: usize,
        total: usize,
        timestep: f32,
        expert: u8,
    },
    Decoding,
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
    index: ModelIndex,
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
        let index = ModelIndex::read(root)?;
        let load_dit = |name: &'static str| {
            WanTransformer3DModel::load(&root.join(name), dtype, device).map_err(|e| PipelineError::Load {
                component: name,
                path: root.join(name),
                msg: e.to_string(),
            })
        };
        let transformer = load_dit("transformer")?;
        let transformer_2 = if index.has_transformer_2() { Some(load_dit("transformer_2")?) } else { None };
        let vae = vae::load(root, VaeParts::Both, dtype, device).map_err(|e| PipelineError::Load {
            component: "vae",
            path: root.join("vae"),
            msg: e.to_string(),
        })?;
        let cfg = vae.config();
        let stats = LatentStats::new(&cfg.latents_mean, &cfg.latents_std, device)?;
        Ok(Self {
            root: root.to_path_buf(),
            index,
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

    pub fn index(&self) -> &ModelIndex {
        &self.index
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
        let (s, z) = (vcfg.scale_factor_spatial, vcfg.z_dim);
        let shape = [1, z, params.latent_frames(), params.height / s, params.width / s];
        let cfg_on = params.guidance > 1.0;
        let negative = match (&embeds.negative, cfg_on) {
            (Some(n), _) => Some(n.to_dtype(self.dtype)?),
            (None, false) => None,
            (None, true) => {
                return Err(PipelineError::Input(
                    "guidance > 1 needs negative prompt embeddings: pass --negative-prompt or --negative-prompt-embeds (or --guidance 1)".into(),
                ))
            }
        };
        let prompt = embeds.prompt.to_dtype(self.dtype)?;
        if self.channel_concat_i2v() && image.is_none() {
            return Err(PipelineError::Input(format!(
                "this transformer takes {} input channels (image-to-video): pass --image",
                self.transformer.config().in_channels
            )));
        }
        let mut latents = match latents {
            Some(l) => {
                if l.dims() != shape {
                    return Err(PipelineError::Input(format!(
                        "--latents has shape {:?}, this size needs {shape:?}",
                        l.dims()
                    )));
                }
                l.to_device(&self.device)?.to_dtype(DType::F32)?
            }
            None => sampling::initial_noise(params.seed, &shape, &self.device)?,
        };

        let condition = match image {
            Some(img) => {
                progress(PipelineProgress::EncodingImage);
                Some(self.image_condition(img, params)?)
            }
            None => None,
        };

        let mut sched = scheduler::from_pretrained(&self.root.join("scheduler"), params.shift).map_err(|e| {
            PipelineError::Load { component: "scheduler", path: self.root.join("scheduler"), msg: e.to_string() }
        })?;
        sched.set_timesteps(params.steps)?;
        let timesteps = sched.timesteps().to_vec();
        let boundary = self.index.boundary_ratio.map(|r| r * 1000.0);
        let patch = self.transformer.config().patch_size;
        let grid = (shape[2], shape[3], shape[4]);
        for (i, &t) in timesteps.iter().enumerate() {
            let low_noise = boundary.is_some_and(|b| (t as f64) < b);
            let (model, g, expert) = match (&self.transformer_2, low_noise) {
                (Some(t2), true) => (t2, params.guidance_2.unwrap_or(params.guidance), 2),
                _ => (&self.transformer, params.guidance, 1),
            };
            let (input, timestep) = match (&condition, self.index.expand_timesteps) {
                (Some(Condition::FirstFrame { latent, mask }), true) => (
                    blend_first_frame(latent, mask, &latents)?,
                    sampling::per_token_timesteps(t, grid, (patch[1], patch[2]), true, &self.device)?,
                ),
                (None, true) => (
                    latents.clone(),
                    sampling::per_token_timesteps(t, grid, (patch[1], patch[2]), false, &self.device)?,
                ),
                (Some(Condition::Channels(c)), false) => {
                    (Tensor::cat(&[&latents, c], 1)?, Tensor::new(&[t], &self.device)?)
                }
                (None, false) => (latents.clone(), Tensor::new(&[t], &self.device)?),
                _ => return Err(PipelineError::Input("image conditioning does not match this pipeline's mode".into())),
            };
            let input = input.to_dtype(self.dtype)?;
            let cond = model.forward(&input, &timestep, &prompt)?;
            let noise = match (&negative, cfg_on) {
                (Some(neg), true) => {
                    let uncond = model.forward(&input, &timestep, neg)?;
                    sampling::guidance(&cond, &uncond, g)?
                }
                _ => cond,
            };
            latents = sched.step(&noise.to_dtype(DType::F32)?, i, &latents)?;
            progress(PipelineProgress::Step { index: i, total: timesteps.len(), timestep: t, expert });
        }
        if let Some(Condition::FirstFrame { latent, mask }) = &condition {
            latents = blend_first_frame(latent, mask, &latents)?;
        }
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
        let (_, c, h, w) = image.dims4()?;
        if c != 3 || h != params.height || w != params.width {
            return Err(PipelineError::Input(format!(
                "image tensor {:?} must be (1, 3, {}, {}) after preprocessing",
                image.dims(),
                params.height,
                params.width
            )));
        }
        let image = image.unsqueeze(2)?; // (1, 3, 1, H, W)
        if self.index.expand_timesteps {
            let mean = self.vae.encode(&image.to_dtype(DType::F32)?, None, &mut |_| {})?.mean;
            let latent = self.stats.normalize(&mean.to_device(&self.device)?)?;
            let s = self.vae.config().scale_factor_spatial;
            let (t, lh, lw) = (params.latent_frames(), params.height / s, params.width / s);
            let mut mask = vec![1f32; t * lh * lw];
            mask[..lh * lw].iter_mut().for_each(|m| *m = 0.0);
            let mask = Tensor::from_vec(mask, (1, 1, t, lh, lw), &self.device)?;
            return Ok(Condition::FirstFrame { latent, mask });
        }
        // A14B / Wan2.1 I2V: encode the image followed by F−1 zero (mid-grey) frames, then prepend the
        // 4-channel mask that marks latent frame 0 as given.
        let zeros = Tensor::zeros((1, 3, params.frames - 1, params.height, params.width), DType::F32, image.device())?;
        let video = Tensor::cat(&[&image.to_dtype(DType::F32)?, &zeros], 2)?;
        let mean = self.vae.encode(&video, None, &mut |_| {})?.mean;
        let latent = self.stats.normalize(&mean.to_device(&self.device)?)?;
        let (_, _, t, lh, lw) = latent.dims5()?;
        let mut mask = vec![0f32; 4 * t * lh * lw];
        for ch in 0..4 {
            mask[ch * t * lh * lw..ch * t * lh * lw + lh * lw].iter_mut().for_each(|m| *m = 1.0);
        }
        let mask = Tensor::from_vec(mask, (1, 4, t, lh, lw), &self.device)?;
        Ok(Condition::Channels(Tensor::cat(&[&mask, &latent], 1)?))
    }
}

/// Image conditioning of the two I2V flavours.
enum Condition {
    /// TI2V: the image latent `(1, z, 1, h, w)` replaces latent frame 0 (`mask` is 0 there).
    FirstFrame { latent: Tensor, mask: Tensor },
    /// A14B: `(1, 4 + z, T, h, w)` concatenated after the latents on the channel axis.
    Channels(Tensor),
}

/// `(1 − m)·condition + m·latents`, broadcasting the one-frame condition over time.
fn blend_first_frame(latent: &Tensor, mask: &Tensor, latents: &Tensor) -> candle_core::Result<Tensor> {
    let keep = mask.broadcast_mul(latents)?;
    let given = (1.0 - mask)?.broadcast_mul(latent)?;
    given + keep
}
