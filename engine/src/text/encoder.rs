//! [`TextEncoder`]: tokenizer + UMT5 from a pipeline folder, producing `prompt_embeds` exactly as
//! `WanPipeline._get_t5_prompt_embeds`: clean → tokenize (pad/truncate to N) → encode → keep the
//! prompt's `mask.sum()` rows (its tokens and `</s>`) → zero rows up to N.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::cache::{model_identity, PromptCache};
use super::clean::prompt_clean;
use super::tokenizer::{tokenizer_file, PromptTokenizer, TokenizedPrompt};
use super::TextError;
use crate::models::umt5::{self, UMT5EncoderModel};
use crate::weights::{self, Checkpoint};

/// diffusers' `max_sequence_length` default for Wan (the DiT's text length).
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;

/// Where and how to run the encoder.
#[derive(Debug, Clone)]
pub struct TextEncoderOptions {
    pub device: Device,
    /// `None`: bf16 for a bf16 checkpoint (the 11.4 GB UMT5-XXL, which would need 23 GB in f32),
    /// f32 otherwise (f16 is avoided: T5 activations overflow it).
    pub dtype: Option<DType>,
    pub max_sequence_length: usize,
}

impl Default for TextEncoderOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: None, max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH }
    }
}

/// A loaded tokenizer + UMT5 encoder. Drop it to free the weights.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    model: UMT5EncoderModel,
    max_sequence_length: usize,
    dtype: DType,
}

impl TextEncoder {
    /// Loads `root/tokenizer/tokenizer.json` and `root/text_encoder/` (config + safetensors shards).
    /// The tokenizer is read first so a missing file is reported before any weights are mapped.
    pub fn load(root: &Path, opts: &TextEncoderOptions) -> Result<Self, TextError> {
        let tokenizer = PromptTokenizer::from_path(root)?;
        let dir = weights::component_dir(root, "text_encoder")?;
        let cfg: umt5::Config = weights::load_config(&dir)?;
        let checkpoint = Checkpoint::open(&dir)?;
        let dtype = resolve_dtype(&checkpoint, opts.dtype)?;
        tracing::info!(
            dir = %dir.display(),
            dtype = ?dtype,
            device = ?opts.device,
            gb = checkpoint.stored_bytes() as f64 / 1e9,
            "loading text encoder"
        );
        let vb = checkpoint.var_builder(dtype, &opts.device)?;
        let model = UMT5EncoderModel::new(&cfg, vb)?;
        if opts.max_sequence_length < 2 {
            return Err(TextError::BadLength(opts.max_sequence_length));
        }
        Ok(Self { tokenizer, model, max_sequence_length: opts.max_sequence_length, dtype })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn max_sequence_length(&self) -> usize {
        self.max_sequence_length
    }

    /// Ids and mask the encoder sees for `prompt` (cleaned first).
    pub fn tokenize(&self, prompt: &str) -> Result<TokenizedPrompt, TextError> {
        self.tokenizer.encode(&prompt_clean(prompt), self.max_sequence_length)
    }

    /// `prompt_embeds` `(1, max_sequence_length, d_model)` in f32 (values rounded to the encoder's
    /// dtype, as diffusers casts them to the text encoder's dtype).
    pub fn encode(&self, prompt: &str) -> Result<Tensor, TextError> {
        let tokens = self.tokenize(prompt)?;
        // Only the real tokens go through UMT5: padded keys are masked out and the relative bias
        // depends only on offsets, so the kept rows are the same as with the padded batch, at a
        // fraction of the cost. The padded rows are discarded anyway: diffusers trims each row to
        // its true length (EOS included) and re-pads with exact zeros.
        let ids = Tensor::new(&tokens.ids[..tokens.len], self.model.device())?.unsqueeze(0)?;
        let hidden = self.model.forward(&ids, None)?.to_dtype(self.dtype)?.to_dtype(DType::F32)?;
        Ok(zero_pad_rows(&hidden, self.max_sequence_length)?)
    }
}

/// Appends zero rows to `(1, len, d)` up to `(1, total, d)`.
pub(crate) fn zero_pad_rows(xs: &Tensor, total: usize) -> candle_core::Result<Tensor> {
    let (b, len, d) = xs.dims3()?;
    if len >= total {
        return xs.narrow(1, 0, total);
    }
    let zeros = Tensor::zeros((b, total - len, d), xs.dtype(), xs.device())?;
    Tensor::cat(&[xs, &zeros], 1)
}

/// The run dtype: the requested one, else bf16 for a bf16 checkpoint and f32 otherwise.
pub(crate) fn resolve_dtype(checkpoint: &Checkpoint, requested: Option<DType>) -> Result<DType, TextError> {
    if let Some(dtype) = requested {
        return Ok(dtype);
    }
    let stored = checkpoint.files.first().map(|f| stored_dtype(f)).transpose()?.flatten();
    Ok(if stored.as_deref() == Some("BF16") { DType::BF16 } else { DType::F32 })
}

/// The dtype string of the first tensor in a safetensors header (`"BF16"`, `"F32"`, …).
fn stored_dtype(path: &Path) -> Result<Option<String>, TextError> {
    use std::io::Read;
    let err = |msg: String| weights::WeightsError::Corrupt { path: path.to_path_buf(), msg };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| err(e.to_string()))?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&header).map_err(|e| err(e.to_string()))?;
    Ok(value.as_object().and_then(|o| {
        o.iter().filter(|(k, _)| *k != "__metadata__").find_map(|(_, v)| v.get("dtype")?.as_str().map(String::from))
    }))
}

/// The run dtype and each prompt's cache key, after checking the tokenizer file exists (so a missing
/// tokenizer is reported before any weights are mapped).
pub(crate) fn cache_keys(
    root: &Path,
    prompts: &[&str],
    opts: &TextEncoderOptions,
) -> Result<(DType, Vec<String>), TextError> {
    let tokenizer_json = tokenizer_file(root);
    if !tokenizer_json.is_file() {
        return Err(TextError::MissingTokenizer(tokenizer_json));
    }
    let dir = weights::component_dir(root, "text_encoder")?;
    let dtype = resolve_dtype(&Checkpoint::open(&dir)?, opts.dtype)?;
    let identity = model_identity(&dir, &tokenizer_json)?;
    let keys: Vec<String> = prompts
        .iter()
        .map(|p| PromptCache::key(&identity, &prompt_clean(p), opts.max_sequence_length, dtype))
        .collect();
    Ok((dtype, keys))
}

/// Embeddings for each prompt, from `cache` when present; the encoder is loaded only if some prompt
/// is missing, and dropped before returning so the denoiser gets the memory.
pub fn embed_prompts(
    root: &Path,
    prompts: &[&str],
    opts: &TextEncoderOptions,
    cache: Option<&PromptCache>,
) -> Result<Vec<Tensor>, TextError> {
    let (dtype, keys) = cache_keys(root, prompts, opts)?;
    let mut out: Vec<Option<Tensor>> = match cache {
        Some(c) => keys.iter().map(|k| c.get(k, &opts.device)).collect::<Result<_, _>>()?,
        None => vec![None; prompts.len()],
    };
    if out.iter().any(Option::is_none) {
        let encoder = TextEncoder::load(root, &TextEncoderOptions { dtype: Some(dtype), ..opts.clone() })?;
        for ((slot, prompt), key) in out.iter_mut().zip(prompts).zip(&keys) {
            if slot.is_none() {
                let embeds = encoder.encode(prompt)?;
                if let Some(c) = cache {
                    c.put(key, &embeds)?;
                }
                *slot = Some(embeds);
            }
        }
        drop(encoder);
    } else {
        tracing::info!(n = prompts.len(), "prompt embeddings served from cache; text encoder not loaded");
    }
    Ok(out.into_iter().flatten().collect())
}
