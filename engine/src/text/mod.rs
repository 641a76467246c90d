//! Prompts in, embeddings out: what `WanPipeline.encode_prompt` does, on whatever device is given.
//!
//! - [`clean`] — diffusers' `prompt_clean` (HTML unescape twice, whitespace collapse).
//! - [`tokenizer`] — `tokenizer/tokenizer.json` with the `tokenizers` crate, padded/truncated.
//! - [`encoder`] — [`TextEncoder`] = tokenizer + UMT5; embeddings trimmed to the prompt's length
//!   and zero-padded exactly as `_get_t5_prompt_embeds`.
//! - [`sharded`] — `--text-encoder-on sharded`: UMT5 split by layer over the worker ranks.
//! - [`hv15`] — HunyuanVideo 1.5's MLLM prompt: Qwen2.5-VL chat template, crop, `hidden_states[-3]`.
//! - [`hv15_sharded`] — the same prompt with Qwen2.5-VL split by layer over the worker ranks.
//! - [`byt5`] — HunyuanVideo 1.5's glyph encoder: ByT5 tokenizer + T5 encoder on the quoted text.
//! - [`cache`] — embeddings on disk keyed by (prompt, model identity, length, dtype), so a re-run
//!   with the same prompt never loads the 11 GB encoder.
//!
//! The intended placement for generation is [`embed_prompts`]: look every prompt up in the cache,
//! and only on a miss load the encoder (on the host with `--text-encoder-on cpu`), encode, and drop it
//! before the denoiser is loaded.

pub mod byt5;
pub mod cache;
pub mod clean;
pub mod encoder;
pub mod hv15;
pub mod hv15_sharded;
pub mod sharded;
pub mod tokenizer;

use std::path::PathBuf;

pub use cache::PromptCache;
pub use clean::prompt_clean;
pub use encoder::{embed_prompts, TextEncoder, TextEncoderOptions, DEFAULT_MAX_SEQUENCE_LENGTH};
pub use tokenizer::{PromptTokenizer, TokenizedPrompt};

/// Errors from loading or running the text encoder and its cache.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("tokenizer file not found: {0} (a Wan pipeline folder has tokenizer/tokenizer.json; convert a spiece.model-only tokenizer once with transformers' T5TokenizerFast.save_pretrained)")]
    MissingTokenizer(PathBuf),
    #[error("cannot use tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("max_sequence_length must leave room for the end-of-sequence token, got {0}")]
    BadLength(usize),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    Spec(#[from] crate::model_spec::ModelSpecError),
    #[error("HunyuanVideo 1.5 text encoder (Qwen2.5-VL): {0}")]
    Qwen(#[from] crate::models::qwen25vl_text::TextModelLoadError),
    #[error("text encoder failed: {0}")]
    Model(#[from] candle_core::Error),
    #[error("prompt-embedding cache {path}: {msg}")]
    Cache { path: PathBuf, msg: String },
}
