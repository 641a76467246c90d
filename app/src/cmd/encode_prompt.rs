//! `tessera encode-prompt`: a prompt in, `prompt_embeds` `(1, N, d_model)` out, ready for
//! `tessera generate --prompt-embeds`. Uses (and fills) the prompt-embedding cache.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use tessera_engine::api::text::{
    embed_prompts, PromptCache, TextEncoderOptions, TextModel, DEFAULT_MAX_SEQUENCE_LENGTH,
};
use tessera_engine::api::{write_tensors, TextEncoderPlacement};

/// Encode a prompt with the pipeline's UMT5 text encoder.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline folder holding `text_encoder/` and `tokenizer/` (optional with --text-encoder and
    /// --tokenizer).
    #[arg(long, required_unless_present_all = ["text_encoder", "tokenizer"])]
    pub model: Option<PathBuf>,
    /// UMT5 file (ComfyUI's umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled) or text_encoder/ folder:
    /// replaces the folder's text_encoder/.
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    /// tokenizer.json or a folder holding it: replaces the folder's tokenizer/.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The prompt (cleaned like diffusers: HTML entities unescaped, whitespace collapsed).
    #[arg(long)]
    pub prompt: String,
    /// Token length N of the output (the DiT's text length).
    #[arg(long, default_value_t = DEFAULT_MAX_SEQUENCE_LENGTH)]
    pub max_sequence_length: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32` or `bf16`; default: bf16 for a bf16 checkpoint, else f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Cache folder (default `$TESSERA_CACHE_DIR/prompt-embeds`, `$XDG_CACHE_HOME/tessera/prompt-embeds`
    /// or `~/.cache/tessera/prompt-embeds`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Encode even if the cache has this prompt, and do not write to the cache.
    #[arg(long)]
    pub bypass_cache: bool,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// cpu: encode in this process; sharded: split the encoder by layer over --ranks worker processes
    /// (each holds ~1/N of the weights).
    #[arg(long = "text-encoder-on", value_enum, default_value_t = TextEncoderPlacement::Cpu)]
    pub placement: TextEncoderPlacement,
    /// Worker processes for `--text-encoder-on sharded`.
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Also encode this negative prompt (written as `negative_prompt_embeds`).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// JSON run report of the sharded run (per-rank weights and peaks).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl Args {
    /// The encoder and tokenizer: the folder's, each replaced by its file flag.
    fn text_model(&self) -> TextModel {
        let folder = TextModel::in_folder(&self.model.clone().unwrap_or_default());
        TextModel {
            encoder: self.text_encoder.clone().unwrap_or(folder.encoder),
            tokenizer: self.tokenizer.clone().unwrap_or(folder.tokenizer),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = TextEncoderOptions {
        device: parse_device(&args.device)?,
        dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
        max_sequence_length: args.max_sequence_length,
    };
    let cache = if args.bypass_cache {
        None
    } else {
        args.cache_dir.clone().map(PromptCache::new).or_else(|| PromptCache::default_dir().map(PromptCache::new))
    };
    let start = std::time::Instant::now();
    let mut prompts = vec![args.prompt.as_str()];
    prompts.extend(args.negative_prompt.as_deref());
    if args.placement == TextEncoderPlacement::Sharded {
        return run_sharded(&args, &prompts, cache.as_ref().map(|c| c.dir().to_path_buf()));
    }
    let text = args.text_model();
    let embeds = embed_prompts(&text, &prompts, &opts, cache.as_ref())
        .with_context(|| format!("encoding the prompt with {}", text.describe()))?;
    let names = ["prompt_embeds", "negative_prompt_embeds"];
    let tensors: Vec<(&str, candle_core::Tensor)> = names.iter().copied().zip(embeds).collect();
    anyhow::ensure!(!tensors.is_empty(), "the text encoder returned no embeddings");
    write_tensors(&args.out, &tensors)?;
    tracing::info!(
        out = %args.out.display(),
        shape = ?tensors[0].1.dims(),
        secs = start.elapsed().as_secs_f64(),
        "wrote prompt_embeds"
    );
    Ok(())
}

/// The encoder split by layer over `--ranks` worker processes (the engine's session runs it).
fn run_sharded(args: &Args, prompts: &[&str], cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use tessera_engine::api::{Session, SessionOptions};
    anyhow::ensure!(
        args.device == "cpu",
        "--text-encoder-on sharded runs on the worker processes' devices; drop --device"
    );
    anyhow::ensure!(args.dtype.is_none(), "--text-encoder-on sharded uses the checkpoint's dtype; drop --dtype");
    anyhow::ensure!(args.ranks >= 1, "--ranks must be at least 1");
    let mut session = Session::new(SessionOptions { prompt_cache_dir: cache_dir, ..SessionOptions::default() });
    let text = args.text_model();
    let result = session.encode_prompts(
        &text,
        prompts,
        args.max_sequence_length,
        TextEncoderPlacement::Sharded,
        args.ranks,
        &mut |_| {},
    );
    session.shutdown();
    let encoded = result
        .map_err(|e| anyhow::anyhow!(e.cli()))
        .with_context(|| format!("encoding the prompt with {} on {} ranks", text.describe(), args.ranks))?;
    let names = ["prompt_embeds", "negative_prompt_embeds"];
    let tensors: Vec<(&str, candle_core::Tensor)> = names.iter().copied().zip(encoded.embeds).collect();
    write_tensors(&args.out, &tensors)?;
    if let (Some(path), Some(report)) = (&args.report, &encoded.report) {
        report.write_json(path).with_context(|| format!("writing the report {}", path.display()))?;
    }
    tracing::info!(out = %args.out.display(), ranks = args.ranks, "wrote prompt_embeds (sharded text encoder)");
    Ok(())
}

fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda (is this build compiled with CUDA?)"),
        _ => {
            let ordinal = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .with_context(|| format!("--device must be cpu, cuda or cuda:N, got {s:?}"))?;
            Device::new_cuda(ordinal).with_context(|| format!("--device {s}"))
        }
    }
}

fn parse_dtype(s: &str) -> anyhow::Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        _ => anyhow::bail!("--dtype must be f32 or bf16, got {s:?}"),
    }
}
