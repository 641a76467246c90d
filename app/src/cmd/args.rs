//! The flags of one generation, declared once: `tessera generate` runs them and `tessera plan`
//! predicts them, so any complete `generate` command line is also a `plan` command line. A preset
//! (`--preset`) gives the plan and default sizes; explicit flags override it field by field. A
//! model folder with a `demo.json` (the built-in demo, `assets/demo`) gives the defaults of what
//! neither the flags nor a preset set.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tessera_engine::api::planning::{load_preset, Applied, Explicit, Preset};
use tessera_engine::api::{
    DemoInfo, DeviceKind, GenerateParams, GenerationRequest, LoraSpec, ModelFiles, Output, ParallelPlan, Prompt,
    Residency, SchedulerKind, TextEncoderPlacement, TilingSpec, VaeMode,
};

/// How the generation is spread over the workers.
#[derive(Args, Debug, Clone, Default)]
pub struct PlanFlags {
    /// Worker ranks (default: --ulysses × --cfg-parallel).
    #[arg(long)]
    pub ranks: Option<usize>,
    /// Ulysses sequence-parallel degree (must divide the attention heads; default: ranks / cfg-parallel).
    #[arg(long)]
    pub ulysses: Option<usize>,
    /// 2: the conditional and unconditional branches on two halves of the ranks (needs --guidance > 1).
    #[arg(long)]
    pub cfg_parallel: Option<usize>,
    /// Ranks sharing one copy of the transformer blocks (FSDP-style; must divide --ranks).
    #[arg(long)]
    pub fsdp: Option<usize>,
    /// Ranks that decode with the VAE (1..=ranks; default 1).
    #[arg(long)]
    pub vae_parallel: Option<usize>,
    /// VAE split over --vae-parallel ranks: halo (row slabs) or tiles (needs --tiling).
    #[arg(long, value_enum)]
    pub vae_mode: Option<VaeMode>,
    /// Tiled VAE decode: TILE_H,TILE_W,STRIDE_H,STRIDE_W in pixels (tiles mode).
    #[arg(long, value_name = "TH,TW,SH,SW", value_parser = TilingSpec::parse)]
    pub tiling: Option<TilingSpec>,
    /// Where the prompt's text encoder (UMT5; HunyuanVideo 1.5: Qwen2.5-VL) runs: cpu (the host) or
    /// sharded (split by layer over the ranks).
    #[arg(long = "text-encoder-on", id = "text_encoder_on", value_enum)]
    pub text_encoder: Option<TextEncoderPlacement>,
    /// Two-expert models (A14B): pipeline (both experts loaded for the whole run) or phased (only the
    /// running expert; each rank swaps in its part of the low-noise expert at the boundary step).
    #[arg(long, value_enum)]
    pub residency: Option<Residency>,
}

/// What happens to the transformer's weights after the denoise (`--weights`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    Keep,
    Free,
}

/// Every flag of a generation (all optional here: `generate` says which it needs).
#[derive(Args, Debug, Clone)]
pub struct GenerationArgs {
    /// Diffusers pipeline folder (model_index.json, transformer/, vae/, scheduler/, text_encoder/,
    /// tokenizer/), a folder of single files (ComfyUI's), or a transformer file. Optional with
    /// --transformer.
    #[arg(long, required_unless_present = "transformer")]
    pub model: Option<PathBuf>,
    /// Transformer file (ComfyUI / Kijai / Wan-native or diffusers names; f32, bf16, f16, fp8 e4m3fn,
    /// fp8 scaled): replaces the folder's transformer/ (whose config.json then describes it).
    #[arg(long)]
    pub transformer: Option<PathBuf>,
    /// A14B's low-noise expert file (replaces transformer_2/).
    #[arg(long)]
    pub transformer_2: Option<PathBuf>,
    /// VAE file (ComfyUI's wan_2.1_vae.safetensors / wan2.2_vae.safetensors, or a diffusers-named
    /// file): replaces vae/.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// UMT5 text-encoder file (ComfyUI's umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled) or folder:
    /// replaces text_encoder/ (needs a tokenizer: the folder's tokenizer/ or --tokenizer).
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    /// tokenizer.json (google/umt5-xxl's) or a folder holding it: replaces tokenizer/.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// config.json, a component folder or a pipeline folder with the configs of files whose
    /// dimensions their shapes cannot settle (finetunes, tiny test models).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// LoRA merged at load: FILE[:STRENGTH][@high|@low] (repeatable; @high = transformer, @low =
    /// transformer_2, none = every expert). lightx2v/Kijai, diffusers/PEFT and Kohya/musubi files.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH][@high|@low]")]
    pub loras: Vec<LoraSpec>,
    /// Prompt text (needs text_encoder/ and tokenizer/ in the model folder, or --text-encoder and
    /// --tokenizer).
    #[arg(long, conflicts_with = "prompt_embeds")]
    pub prompt: Option<String>,
    /// Safetensors file with tensor `prompt_embeds` [1, L, text_dim].
    #[arg(long)]
    pub prompt_embeds: Option<PathBuf>,
    /// Negative prompt (default "" under guidance > 1).
    #[arg(long, conflicts_with = "negative_prompt_embeds")]
    pub negative_prompt: Option<String>,
    /// Safetensors file with tensor `negative_prompt_embeds` (may be the same file as --prompt-embeds).
    #[arg(long)]
    pub negative_prompt_embeds: Option<PathBuf>,
    /// Input image (PNG/JPEG) for image-to-video.
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long)]
    pub width: Option<usize>,
    /// Frames, 4k+1 (e.g. 81, 121).
    #[arg(long)]
    pub frames: Option<usize>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (of the high-noise expert for A14B); CFG runs when > 1.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guidance of the low-noise expert (A14B).
    #[arg(long)]
    pub guidance_2: Option<f64>,
    /// Flow shift override (default: the scheduler config's).
    #[arg(long)]
    pub shift: Option<f64>,
    /// Sampler: unipc or euler (default: the model's scheduler_config.json).
    #[arg(long, value_enum)]
    pub scheduler: Option<SchedulerKind>,
    /// Custom schedule, one sigma per step before --shift applies (4-step distill: 1,0.75,0.5,0.25).
    #[arg(long, value_name = "S1,S2,…", value_delimiter = ',', num_args = 1..)]
    pub sigmas: Option<Vec<f64>>,
    /// Seed of the initial noise (StdRng/ChaCha12 normal draws; see README).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial noise: tensor `latents` [1, z, T, h, w] (e.g. exported from diffusers).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// x.safetensors (tensor `video` (B,F,C,H,W) in [0,1]), x.mp4, or dir/ (PNG frames).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the final latents (tensor `latents`).
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// JSON report: per rank its phases with their peaks, weights, step times, comm share.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write live denoise previews here (created): `step_NNN.png`, the x0 estimate in RGB, ≤ 256 px.
    #[arg(long)]
    pub preview_dir: Option<PathBuf>,
    /// A preview every K denoise steps (default 1; needs --preview-dir).
    #[arg(long, value_name = "K", requires = "preview_dir")]
    pub preview_every: Option<usize>,
    /// Frames per second of an MP4 (default: 24 for TI2V-5B, 16 otherwise).
    #[arg(long)]
    pub fps: Option<f64>,
    /// cpu (default) or cuda: the device of every worker (one per GPU with cuda).
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// After the denoise: keep (default, or the preset's) the transformer loaded through the VAE
    /// decode and for the session's next run, or free it before the decode (a lower decode peak;
    /// nothing is reused).
    #[arg(long, value_enum)]
    pub weights: Option<Weights>,
    /// A parallel preset (presets/NAME.toml): its plan and default size, with any flag overriding it
    /// field by field. Check it first with `tessera plan --preset FILE`.
    #[arg(long)]
    pub preset: Option<PathBuf>,
    #[command(flatten)]
    pub plan: PlanFlags,
}

impl GenerationArgs {
    /// The preset (if any) with the explicit flags on top.
    pub fn applied(&self) -> Result<Applied> {
        let explicit = Explicit {
            ranks: self.plan.ranks,
            ulysses: self.plan.ulysses,
            cfg_parallel: self.plan.cfg_parallel,
            fsdp: self.plan.fsdp,
            vae_parallel: self.plan.vae_parallel,
            vae_mode: self.plan.vae_mode,
            vae_tiling: self.plan.tiling,
            text_encoder: self.plan.text_encoder,
            residency: self.plan.residency,
            height: self.height,
            width: self.width,
            frames: self.frames,
            steps: self.steps,
            guidance: self.guidance,
            keep_weights: self.weights.map(|w| w == Weights::Keep),
            scheduler: self.scheduler,
            sigmas: self.sigmas.clone(),
        };
        let preset = match &self.preset {
            Some(path) => load_preset(path).with_context(|| format!("loading the preset {}", path.display()))?,
            None => Preset::flags_only(self.base_plan()),
        };
        Ok(preset.apply(&explicit))
    }

    /// The plan the flags alone describe: Ulysses over the ranks unless told otherwise.
    fn base_plan(&self) -> ParallelPlan {
        let f = &self.plan;
        let cfg_parallel = f.cfg_parallel.unwrap_or(1);
        let ranks = f.ranks.unwrap_or(f.ulysses.unwrap_or(1) * cfg_parallel);
        ParallelPlan {
            ranks,
            ulysses: f.ulysses.unwrap_or(ranks.checked_div(cfg_parallel).unwrap_or(ranks)),
            cfg_parallel,
            fsdp: f.fsdp.unwrap_or(1),
            vae_parallel: f.vae_parallel.unwrap_or(1),
            // Tiles are what --tiling implies when no mode is named.
            vae_mode: f.vae_mode.unwrap_or(if f.tiling.is_some() { VaeMode::Tiles } else { VaeMode::Halo }),
            vae_tiling: f.tiling,
            text_encoder: f.text_encoder.unwrap_or_default(),
            residency: f.residency.unwrap_or_default(),
        }
    }

    /// The request the flags describe (`generate` additionally needs --out and a prompt).
    pub fn request(&self) -> Result<GenerationRequest> {
        let applied = self.applied()?;
        let demo = DemoInfo::read(&self.model())?;
        let need =
            |v: Option<usize>, flag: &str| v.with_context(|| format!("{flag} is required (or a --preset with it)"));
        let params = GenerateParams {
            height: need(applied.height.or(demo.as_ref().map(|d| d.height)), "--height")?,
            width: need(applied.width.or(demo.as_ref().map(|d| d.width)), "--width")?,
            frames: need(applied.frames.or(demo.as_ref().map(|d| d.frames)), "--frames")?,
            steps: need(applied.steps.or(demo.as_ref().map(|d| d.steps)), "--steps")?,
            guidance: applied
                .guidance
                .or(demo.as_ref().map(|d| d.guidance))
                .context("--guidance is required (or a --preset with it)")?,
            guidance_2: self.guidance_2,
            shift: self.shift.or(demo.as_ref().and_then(|d| d.shift)),
            seed: self.seed,
            scheduler: applied.scheduler,
            sigmas: applied.sigmas.clone(),
        };
        let prompt = match (&self.prompt, &self.prompt_embeds) {
            (Some(t), _) => Prompt::Text(t.clone()),
            (None, Some(p)) => Prompt::Embeds(p.clone()),
            (None, None) => anyhow::bail!("--prompt or --prompt-embeds is required"),
        };
        let negative = match (&self.negative_prompt, &self.negative_prompt_embeds) {
            (Some(t), _) => Some(Prompt::Text(t.clone())),
            (None, Some(p)) => Some(Prompt::Embeds(p.clone())),
            (None, None) => None,
        };
        Ok(GenerationRequest {
            negative,
            image: self.image.clone(),
            latents: self.latents.clone(),
            plan: applied.plan,
            device: self.device.unwrap_or(DeviceKind::Cpu),
            keep_weights: applied.keep_weights,
            output: self.out.as_ref().map(|path| Output {
                path: path.clone(),
                fps: self.fps,
                latents: self.save_latents.clone(),
            }),
            files: self.files(),
            preview_every: self.preview_dir.as_ref().map(|_| self.preview_every.unwrap_or(1)),
            ..GenerationRequest::new(self.model(), prompt, params)
        })
    }

    /// `--model`, empty when the model is given as files only.
    pub fn model(&self) -> PathBuf {
        self.model.clone().unwrap_or_default()
    }

    /// The component files, config and LoRAs of the flags.
    pub fn files(&self) -> ModelFiles {
        ModelFiles {
            transformer: self.transformer.clone(),
            transformer_2: self.transformer_2.clone(),
            vae: self.vae.clone(),
            text_encoder: self.text_encoder.clone(),
            tokenizer: self.tokenizer.clone(),
            config: self.config.clone(),
            loras: self.loras.clone(),
        }
    }
}
