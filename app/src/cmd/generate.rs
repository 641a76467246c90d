//! `tessera generate`: text-to-video or image-to-video with a Wan pipeline folder (the exact CLI
//! contract of the project; see README). One CPU rank without parallel flags runs the pipeline in
//! this process; `--ranks N > 1`, `--device cuda` or any parallel flag runs the `Generate` job on
//! `tessera-worker` processes (see `generate_workers`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;
use tessera_engine::media::{self, OutputKind};
use tessera_engine::pipeline::image::load_image;
use tessera_engine::pipeline::{GenerateParams, PipelineProgress, PromptEmbeds, WanPipeline};
use tessera_engine::tensor_io;
use tessera_engine::text::{self, PromptCache, TextEncoderOptions, DEFAULT_MAX_SEQUENCE_LENGTH};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Diffusers pipeline folder (model_index.json, transformer/, vae/, scheduler/, text_encoder/, tokenizer/).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text (needs text_encoder/ and tokenizer/ in the model folder).
    #[arg(long, conflicts_with = "prompt_embeds", required_unless_present = "prompt_embeds")]
    pub prompt: Option<String>,
    /// Safetensors file with tensor `prompt_embeds` [1, L, text_dim].
    #[arg(long)]
    pub prompt_embeds: Option<PathBuf>,
    /// Negative prompt (default "" when guidance > 1 and no embeddings are given).
    #[arg(long, conflicts_with = "negative_prompt_embeds")]
    pub negative_prompt: Option<String>,
    /// Safetensors file with tensor `negative_prompt_embeds` (may be the same file as --prompt-embeds).
    #[arg(long)]
    pub negative_prompt_embeds: Option<PathBuf>,
    /// Input image (PNG/JPEG) for image-to-video.
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long)]
    pub height: usize,
    #[arg(long)]
    pub width: usize,
    /// Frames, 4k+1 (e.g. 81, 121).
    #[arg(long)]
    pub frames: usize,
    #[arg(long)]
    pub steps: usize,
    /// Classifier-free guidance scale (of the high-noise expert for A14B).
    #[arg(long)]
    pub guidance: f64,
    /// Guidance of the low-noise expert (A14B).
    #[arg(long)]
    pub guidance_2: Option<f64>,
    /// Flow shift override (default: the scheduler config's).
    #[arg(long)]
    pub shift: Option<f64>,
    /// Seed of the initial noise (StdRng/ChaCha12 normal draws; see README).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial noise: tensor `latents` [1, z, T, h, w] (e.g. exported from diffusers).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// x.safetensors (tensor `video` (B,F,C,H,W) in [0,1]), x.mp4, or dir/ (PNG frames).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the final latents (tensor `latents`).
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// JSON report: wall_seconds, per-rank peak/weights bytes and phases.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Worker ranks (default: --ulysses × --cfg-parallel). One CPU rank without parallel flags runs
    /// in this process.
    #[arg(long)]
    pub ranks: Option<usize>,
    /// cpu or cuda (cuda always runs on tessera-worker processes, one per GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Ulysses sequence-parallel degree (must divide the attention heads; default: ranks / cfg-parallel).
    #[arg(long)]
    pub ulysses: Option<usize>,
    /// 2: the conditional and unconditional branches on two halves of the ranks (needs --guidance > 1).
    #[arg(long)]
    pub cfg_parallel: Option<usize>,
    /// Ranks sharing one copy of the transformer blocks (FSDP-style; must divide --ranks).
    #[arg(long)]
    pub fsdp: Option<usize>,
    /// Ranks that decode with the VAE (1..=ranks).
    #[arg(long)]
    pub vae_parallel: Option<usize>,
    /// VAE split over --vae-parallel ranks: halo (row slabs) or tiles (needs --tiling).
    #[arg(long, value_enum)]
    pub vae_mode: Option<tessera_engine::parallel::plan::VaeMode>,
    /// Tiled VAE decode: TILE_H,TILE_W,STRIDE_H,STRIDE_W in pixels (tiles mode).
    #[arg(long, value_name = "TH,TW,SH,SW", value_parser = tessera_engine::parallel::plan::TilingSpec::parse)]
    pub tiling: Option<tessera_engine::parallel::plan::TilingSpec>,
    /// Where the UMT5 text encoder runs: cpu (this process) or sharded (across the ranks).
    #[arg(long, value_enum)]
    pub text_encoder: Option<tessera_engine::parallel::plan::TextEncoderPlacement>,
    /// A parallel preset (presets/NAME.toml): its plan, with any of the flags above overriding it
    /// field by field. Check it first with `tessera plan --preset FILE`.
    #[arg(long)]
    pub preset: Option<PathBuf>,
    /// Frames per second of an MP4 (default: 24 for TI2V-5B, 16 otherwise).
    #[arg(long)]
    pub fps: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    seconds: f64,
    peak_bytes: u64,
}

#[derive(Debug, Serialize)]
struct RankReport {
    rank: usize,
    device: String,
    peak_bytes: u64,
    weights_bytes: u64,
    phases: Vec<Phase>,
}

#[derive(Debug, Serialize)]
struct Report {
    wall_seconds: f64,
    ranks: Vec<RankReport>,
}

/// Times phases and reads this process's peak RSS at their ends.
struct PhaseClock {
    phases: Vec<Phase>,
    start: std::time::Instant,
}

impl PhaseClock {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = std::time::Instant::now();
        let out = f()?;
        let peak_bytes = super::bench::peak_rss_bytes().unwrap_or(0);
        self.phases.push(Phase { name: name.into(), seconds: t0.elapsed().as_secs_f64(), peak_bytes });
        Ok(out)
    }
}

impl GenerateArgs {
    /// Whether any parallel-plan flag was given (then the job runs on workers even for one rank).
    pub fn has_plan_flags(&self) -> bool {
        self.ulysses.is_some()
            || self.cfg_parallel.is_some()
            || self.fsdp.is_some()
            || self.vae_parallel.is_some()
            || self.vae_mode.is_some()
            || self.tiling.is_some()
            || self.text_encoder.is_some()
            || self.preset.is_some()
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if !matches!(a.device.as_str(), "cpu" | "cuda") {
        bail!("--device {}: use cpu or cuda", a.device);
    }
    if a.ranks.is_some_and(|r| r > 1) || a.device == "cuda" || a.has_plan_flags() {
        return super::generate_workers::run(&a);
    }
    if a.ranks == Some(0) {
        bail!("--ranks must be at least 1");
    }
    let kind = OutputKind::of(&a.out).map_err(anyhow::Error::msg)?;
    let params = GenerateParams {
        height: a.height,
        width: a.width,
        frames: a.frames,
        steps: a.steps,
        guidance: a.guidance,
        guidance_2: a.guidance_2,
        shift: a.shift,
        seed: a.seed,
    };
    let dev = Device::Cpu;
    let mut clock = PhaseClock { phases: vec![], start: std::time::Instant::now() };
    let embeds = clock.run("text_encode", || prompt_embeds(&a, &dev))?;
    let pipe = clock.run("load", || {
        WanPipeline::load(&a.model, DType::F32, &dev).with_context(|| format!("loading {}", a.model.display()))
    })?;
    params.validate(pipe.size_multiple())?;
    let image =
        a.image.as_ref().map(|p| load_image(p, a.height, a.width, &dev).map_err(anyhow::Error::msg)).transpose()?;
    let latents = a.latents.as_ref().map(|p| tensor_io::read_tensor(p, "latents", DType::F32, &dev)).transpose()?;
    let pb = crate::progress::bar(params.steps as u64, "denoise");
    let out = clock.run("generate", || {
        Ok(pipe.generate(&params, &embeds, image.as_ref(), latents.as_ref(), &mut |p| match p {
            PipelineProgress::Step { index, .. } => pb.set_position(index as u64 + 1),
            PipelineProgress::Decoding => pb.set_message("decode"),
            PipelineProgress::EncodingImage => pb.set_message("encode image"),
        })?)
    })?;
    pb.finish_and_clear();
    let fps = a.fps.unwrap_or(if pipe.index().expand_timesteps { 24.0 } else { 16.0 });
    clock.run("save", || save(&a.out, &kind, &out.video, fps))?;
    if let Some(p) = &a.save_latents {
        tensor_io::write_atomic(p, &[("latents", out.latents.clone())])?;
    }
    if let Some(path) = &a.report {
        let weights_bytes = dir_bytes(&a.model.join("transformer"))
            + dir_bytes(&a.model.join("transformer_2"))
            + dir_bytes(&a.model.join("vae"));
        let report = Report {
            wall_seconds: clock.start.elapsed().as_secs_f64(),
            ranks: vec![RankReport {
                rank: 0,
                device: "cpu".into(),
                peak_bytes: super::bench::peak_rss_bytes().unwrap_or(0),
                weights_bytes,
                phases: std::mem::take(&mut clock.phases),
            }],
        };
        let text = serde_json::to_string_pretty(&report)?;
        tensor_io::write_file_atomic(path, |tmp| std::fs::write(tmp, &text).map_err(|e| e.to_string()))?;
    }
    tracing::info!("wrote {}", a.out.display());
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn save(out: &Path, kind: &OutputKind, video: &Tensor, fps: f64) -> Result<()> {
    match kind {
        OutputKind::Safetensors => tensor_io::write_atomic(out, &[("video", video.clone())])?,
        OutputKind::Mp4 => media::write_mp4(out, &media::Frames::from_tensor(video)?, fps)?,
        OutputKind::PngFrames => media::write_png_frames(out, &media::Frames::from_tensor(video)?)?,
    }
    Ok(())
}

/// Embeddings from files, or from prompts through the text encoder (cached on disk).
pub(super) fn prompt_embeds(a: &GenerateArgs, dev: &Device) -> Result<PromptEmbeds> {
    let from_file = |path: &Path, name: &str| tensor_io::read_tensor(path, name, DType::F32, dev);
    let mut texts: Vec<&str> = vec![];
    if let Some(p) = &a.prompt {
        texts.push(p);
    }
    let want_negative = a.guidance > 1.0 || a.negative_prompt.is_some();
    let neg_text = if a.negative_prompt_embeds.is_none() && want_negative {
        Some(a.negative_prompt.as_deref().unwrap_or(""))
    } else {
        None
    };
    if let Some(n) = neg_text {
        texts.push(n);
    }
    let mut encoded = if texts.is_empty() {
        vec![]
    } else {
        let opts =
            TextEncoderOptions { device: dev.clone(), dtype: Some(DType::F32), max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH };
        let cache = PromptCache::default_dir().map(PromptCache::new);
        text::embed_prompts(&a.model, &texts, &opts, cache.as_ref()).with_context(|| {
            "encoding prompts needs text_encoder/ and tokenizer/ in the model folder; or pass --prompt-embeds / --negative-prompt-embeds"
        })?
    }
    .into_iter();
    let prompt = match &a.prompt_embeds {
        Some(p) => from_file(p, "prompt_embeds")?,
        None => encoded.next().context("no prompt embeddings")?,
    };
    let negative = match (&a.negative_prompt_embeds, neg_text) {
        (Some(p), _) => Some(from_file(p, "negative_prompt_embeds")?),
        (None, Some(_)) => Some(encoded.next().context("no negative prompt embeddings")?),
        (None, None) => None,
    };
    Ok(PromptEmbeds { prompt, negative })
}
