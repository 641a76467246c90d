//! `tessera encode-prompt`: a prompt in, `prompt_embeds` `(1, N, d_model)` out, ready for
//! `tessera generate --prompt-embeds`. Uses (and fills) the prompt-embedding cache.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use tessera_engine::tensor_io;
use tessera_engine::text::{self, PromptCache, TextEncoderOptions, DEFAULT_MAX_SEQUENCE_LENGTH};

/// Encode a prompt with the pipeline's UMT5 text encoder.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline folder holding `text_encoder/` and `tokenizer/`.
    #[arg(long)]
    pub model: PathBuf,
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
    let embeds = text::embed_prompts(&args.model, &[args.prompt.as_str()], &opts, cache.as_ref())
        .with_context(|| format!("encoding the prompt with the text encoder of {}", args.model.display()))?;
    let embeds = embeds.into_iter().next().context("the text encoder returned no embeddings")?;
    tensor_io::write_atomic(&args.out, &[("prompt_embeds", embeds.clone())])?;
    tracing::info!(
        out = %args.out.display(),
        shape = ?embeds.dims(),
        secs = start.elapsed().as_secs_f64(),
        "wrote prompt_embeds"
    );
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
