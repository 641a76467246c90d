//! `HunyuanVideo15Pipeline` (text-to-video) and `HunyuanVideo15ImageToVideoPipeline` on one device,
//! exactly as diffusers runs them when the prompt embeddings are given: FlowMatchEuler with the
//! pipeline's custom sigmas (`linspace(1, 0, N+1)[:-1]`, shifted once), classifier-free guidance
//! through the guider (`uncond + g·(cond − uncond)`; g = 1 runs one forward per step), the
//! transformer input `[latents, cond latents, mask]`, then `decode(latents / scaling_factor)` mapped
//! to [0, 1]. The single-device reference the tests hold the workers' generate job against (the job
//! runs the same steps through `pipeline::denoise::run_loop` and `pipeline::sharded::Expert`).
//!
//! T2V: zero cond latents and mask. I2V ([`ImageCond`]): the image is resized into the bucket
//! `transformer.config.target_size` picks for its aspect ([`i2v_bucket`], [`resize_and_crop`]); cond
//! latents = `vae.encode(image).mode() · scaling_factor` at frame 0 (zeros after), mask 1 at frame 0;
//! SigLIP's `last_hidden_state` of the same image is the image context of both CFG branches. A
//! meanflow transformer (`use_meanflow`, the step-distilled I2V one) also takes `timestep_r` = the
//! next timestep (0 at the last step).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::models::hv15::transformer::{self, Context, HunyuanVideo15Transformer3DModel};
use crate::models::hv15::vae::{self, AutoencoderKLHunyuanVideo15};
use crate::models::siglip::{pil_resize, ImageEncoder, PilFilter};
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
    fn context<'a>(&'a self, image: Option<&'a Tensor>) -> Context<'a> {
        Context { text: &self.text, glyph: self.glyph.as_ref(), image }
    }
}

/// The image conditioning of an I2V run.
#[derive(Debug, Clone)]
pub struct ImageCond {
    /// `vae.encode(image).latent_dist.mode() · scaling_factor`, `[1, z, 1, h, w]`.
    pub latents: Tensor,
    /// SigLIP `last_hidden_state` of the image, `[K, image_embed_dim]`.
    pub embeds: Tensor,
}

/// `generate_crop_size_list(target_size, patch)`: the `(height, width)` buckets of about
/// `target_size²` pixels in multiples of `patch`, aspect at most 4.
pub fn crop_size_list(target_size: usize, patch: usize) -> Vec<(usize, usize)> {
    let num_patches = ((target_size as f64 / patch as f64).powi(2)).round() as usize;
    let (mut wp, mut hp) = (num_patches, 1usize);
    let mut out = Vec::new();
    while wp > 0 {
        if wp.max(hp) as f64 / wp.min(hp) as f64 <= 4.0 {
            out.push((wp * patch, hp * patch));
        }
        if (hp + 1) * wp <= num_patches {
            hp += 1;
        } else {
            wp -= 1;
        }
    }
    out
}

/// `HunyuanVideo15ImageProcessor.calculate_default_height_width`: the bucket `(height, width)` for
/// an `h × w` image (`get_closest_ratio`: the closest rounded aspect on the image's side of 1).
pub fn i2v_bucket(h: usize, w: usize, target_size: usize, vae_scale: usize) -> Result<(usize, usize)> {
    let buckets = crop_size_list(target_size, vae_scale);
    let aspect = h as f64 / w as f64;
    let round5 = |x: f64| (x * 1e5).round() / 1e5;
    let best = buckets
        .iter()
        .map(|&(bh, bw)| ((bh, bw), round5(bh as f64 / bw as f64) - aspect))
        .filter(|(_, d)| if aspect >= 1.0 { *d <= 0.0 } else { *d >= 0.0 })
        // `min` keeps the first of equal distances, as Python's `min`.
        .fold(None, |best: Option<((usize, usize), f64)>, cur| match best {
            Some(b) if b.1.abs() <= cur.1.abs() => Some(b),
            _ => Some(cur),
        });
    best.map(|(hw, _)| hw)
        .ok_or_else(|| Hv15PipelineError::Input(format!("no bucket of target size {target_size} fits a {h}×{w} image")))
}

/// `VaeImageProcessor._resize_and_crop` of an RGB image `(h, w, 3)` to `(height, width)`: scale
/// (PIL Lanczos) to cover, centre on a black canvas. An image already at the size is returned as is.
pub fn resize_and_crop(rgb: &[u8], (h, w): (usize, usize), (height, width): (usize, usize)) -> Vec<u8> {
    if (h, w) == (height, width) {
        return rgb.to_vec();
    }
    let ratio = width as f64 / height as f64;
    let src_ratio = w as f64 / h as f64;
    let src_w = if ratio > src_ratio { width } else { w * height / h };
    let src_h = if ratio <= src_ratio { height } else { h * width / w };
    let resized = pil_resize(rgb, (h, w, 3), (src_h, src_w), PilFilter::Lanczos);
    let mut out = vec![0u8; height * width * 3];
    // `paste(box=(width // 2 − src_w // 2, …))` with Python's floor division (the offset may be negative).
    let (ox, oy) = ((width / 2) as i64 - (src_w / 2) as i64, (height / 2) as i64 - (src_h / 2) as i64);
    for y in 0..src_h {
        let ty = y as i64 + oy;
        if ty < 0 || ty >= height as i64 {
            continue;
        }
        for x in 0..src_w {
            let tx = x as i64 + ox;
            if tx < 0 || tx >= width as i64 {
                continue;
            }
            let (s, t) = ((y * src_w + x) * 3, (ty as usize * width + tx as usize) * 3);
            out[t..t + 3].copy_from_slice(&resized[s..s + 3]);
        }
    }
    out
}

/// An RGB image file as `(pixels (h, w, 3), (h, w))`.
pub fn read_rgb(path: &Path) -> Result<(Vec<u8>, (usize, usize))> {
    let img = image::open(path)
        .map_err(|e| Hv15PipelineError::Input(format!("cannot read image {}: {e}", path.display())))?
        .to_rgb8();
    let hw = (img.height() as usize, img.width() as usize);
    Ok((img.into_raw(), hw))
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

/// A loaded HunyuanVideo 1.5 pipeline folder (transformer, vae, scheduler, guider; for I2V also
/// the image encoder and feature extractor).
pub struct Hv15Pipeline {
    transformer: HunyuanVideo15Transformer3DModel,
    vae: AutoencoderKLHunyuanVideo15,
    image_encoder: Option<ImageEncoder>,
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
    /// Loads the folder `root`; with `image_encoder/` (an I2V folder) also SigLIP and the VAE encoder.
    pub fn load(root: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_transformer(root, &root.join("transformer"), dtype, device)
    }

    /// [`Self::load`] with the transformer from `transformer_dir` (e.g. the step-distilled
    /// `transformer_meanflow/` beside an I2V folder's own).
    pub fn load_with_transformer(root: &Path, transformer_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let transformer = transformer::load(transformer_dir, dtype, device).map_err(|e| Hv15PipelineError::Load {
            component: "transformer",
            path: transformer_dir.to_path_buf(),
            msg: e.to_string(),
        })?;
        let i2v = root.join("image_encoder").is_dir();
        let parts = if i2v { VaeParts::Both } else { VaeParts::Decoder };
        let vae = vae::load(root, parts, DType::F32, device).map_err(|e| Hv15PipelineError::Load {
            component: "vae",
            path: root.join("vae"),
            msg: e.to_string(),
        })?;
        let image_encoder = i2v.then(|| ImageEncoder::load(root, device)).transpose().map_err(|e| {
            Hv15PipelineError::Load { component: "image_encoder", path: root.into(), msg: e.to_string() }
        })?;
        let scheduler = read_json(&root.join("scheduler/scheduler_config.json"), "scheduler")?;
        let guider: GuiderConfig = read_json(&root.join("guider/guider_config.json"), "guider")?;
        Ok(Self { transformer, vae, image_encoder, scheduler, guidance_scale: guider.guidance_scale })
    }

    /// The I2V bucket `(height, width)` for an `h × w` image.
    pub fn bucket(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        i2v_bucket(h, w, self.transformer.config().target_size, self.vae.config().spatial_compression_ratio)
    }

    /// The I2V conditioning of an RGB image `(h, w, 3)`, resized into its bucket first: cond
    /// latents (VAE encode, tiled when `tiling` is given, as diffusers tiles every VAE call once
    /// tiling is enabled) and SigLIP embeddings. Also the bucket `(height, width)`.
    pub fn image_cond(
        &self,
        rgb: &[u8],
        hw: (usize, usize),
        tiling: Option<&Tiling>,
    ) -> Result<(ImageCond, (usize, usize))> {
        let Some(enc) = &self.image_encoder else {
            return Err(Hv15PipelineError::Input(
                "this folder has no image_encoder/: it is not an I2V pipeline".into(),
            ));
        };
        let (bh, bw) = self.bucket(hw.0, hw.1)?;
        let px = resize_and_crop(rgb, hw, (bh, bw));
        let embeds = enc.embeds(&px, (bh, bw)).map_err(|e| Hv15PipelineError::Input(e.to_string()))?.squeeze(0)?;
        // `VaeImageProcessor.preprocess`: `2 · (v / 255) − 1` in f32, `[1, 3, 1, H, W]`.
        let data: Vec<f32> = px.iter().map(|v| 2.0 * (*v as f32 / 255.0) - 1.0).collect();
        let video = Tensor::from_vec(data, (bh, bw, 3), self.vae.device())?
            .permute((2, 0, 1))?
            .reshape((1, 3, 1, bh, bw))?
            .contiguous()?;
        let moments = self.vae.encode(&video, tiling, &mut |_| {})?;
        let latents = (moments.mean * self.vae.config().scaling_factor)?;
        Ok((ImageCond { latents, embeds }, (bh, bw)))
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
        self.denoise(latents, steps, guidance, shift, prompt, negative, None)
    }

    /// `[cond latents, mask]` `[1, z + 1, T, h, w]`: zeros for T2V; for I2V the image latents and
    /// a mask of 1 at frame 0, zeros after.
    /// `image_latents`: [`ImageCond::latents`] (`None`: T2V).
    pub fn cond_and_mask(latents: &Tensor, image_latents: Option<&Tensor>) -> Result<Tensor> {
        let (_, z, t, h, w) = latents.dims5()?;
        let zeros = |c: usize, f: usize| Tensor::zeros((1, c, f, h, w), latents.dtype(), latents.device());
        let Some(il) = image_latents else { return Ok(zeros(z + 1, t)?) };
        let il = il.to_dtype(latents.dtype())?.to_device(latents.device())?;
        if il.dims() != [1, z, 1, h, w] {
            return Err(Hv15PipelineError::Input(format!(
                "image latents {:?} do not fit latents {:?} (the image must be at the run's size)",
                il.dims(),
                latents.dims()
            )));
        }
        let cond = Tensor::cat(&[il, zeros(z, t - 1)?], 2)?;
        let mask =
            Tensor::cat(&[Tensor::ones((1, 1, 1, h, w), latents.dtype(), latents.device())?, zeros(1, t - 1)?], 2)?;
        Ok(Tensor::cat(&[cond, mask], 1)?)
    }

    /// The denoise loop, T2V (`image` `None`) or I2V; a meanflow transformer gets `timestep_r`.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        latents: &Tensor,
        steps: usize,
        guidance: f64,
        shift: Option<f64>,
        prompt: &PromptEmbeds,
        negative: Option<&PromptEmbeds>,
        image: Option<&ImageCond>,
    ) -> Result<Tensor> {
        let (b, z, _, _, _) = latents.dims5()?;
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
        let cond_and_mask = Self::cond_and_mask(latents, image.map(|i| &i.latents))?;
        let image_embeds = image.map(|i| &i.embeds);
        let meanflow = cfg.use_meanflow;
        let mut x = latents.clone();
        for i in 0..steps {
            let ts = Tensor::new(&[sched.timesteps()[i]], latents.device())?;
            // `timestep_r` = the next timestep, 0 after the last (diffusers' I2V loop).
            let tr = meanflow
                .then(|| Tensor::new(&[sched.timesteps().get(i + 1).copied().unwrap_or(0.0)], latents.device()))
                .transpose()?;
            let input = Tensor::cat(&[&x, &cond_and_mask], 1)?;
            let cond = self.transformer.forward(&input, &ts, tr.as_ref(), &[prompt.context(image_embeds)])?;
            let pred = match negative.filter(|_| cfg_on) {
                Some(neg) => {
                    let uncond = self.transformer.forward(&input, &ts, tr.as_ref(), &[neg.context(image_embeds)])?;
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
