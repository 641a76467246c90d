//! [`TextEncoder`]: tokenizer + UMT5 from a [`TextModel`] (a pipeline folder's or single files), producing `prompt_embeds` exactly as
//! `WanPipeline._get_t5_prompt_embeds`: clean → tokenize (pad/truncate to N) → encode → keep the
//! prompt's `mask.sum()` rows (its tokens and `</s>`) → zero rows up to N.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::cache::{model_identity, PromptCache};
use super::clean::prompt_clean;
use super::tokenizer::{tokenizer_file, PromptTokenizer, TokenizedPrompt};
use super::TextError;
use crate::model_spec::TextModel;
use crate::models::umt5::UMT5EncoderModel;
use crate::weights;

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
    /// Loads the tokenizer and the UMT5 encoder of `model` (a `text_encoder/` folder with its config,
    /// or a single file whose shapes give the config). The tokenizer is read first so a missing file
    /// is reported before any weights are mapped.
    pub fn load(model: &TextModel, opts: &TextEncoderOptions) -> Result<Self, TextError> {
        let tokenizer = PromptTokenizer::from_path(&model.tokenizer)?;
        let cfg = model.config()?;
        let files = model.files()?;
        let dtype = resolve_dtype(&files, opts.dtype)?;
        tracing::info!(
            encoder = %model.encoder.display(),
            dtype = ?dtype,
            device = ?opts.device,
            gb = stored_bytes(&files) as f64 / 1e9,
            "loading text encoder"
        );
        let vb = model.weights()?.var_builder(dtype, &opts.device)?;
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

/// The run dtype: the requested one, else bf16 for a bf16 checkpoint and f32 otherwise (f16 and
/// fp8 files run in f32: T5 activations overflow f16).
pub(crate) fn resolve_dtype(files: &[PathBuf], requested: Option<DType>) -> Result<DType, TextError> {
    if let Some(dtype) = requested {
        return Ok(dtype);
    }
    let stored = files.first().map(|f| stored_dtype(f)).transpose()?.flatten();
    Ok(if stored.as_deref() == Some("BF16") { DType::BF16 } else { DType::F32 })
}

/// Total bytes of weight files as stored.
pub(crate) fn stored_bytes(files: &[PathBuf]) -> u64 {
    files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
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
    model: &TextModel,
    prompts: &[&str],
    opts: &TextEncoderOptions,
) -> Result<(DType, Vec<String>), TextError> {
    let tokenizer_json = tokenizer_file(&model.tokenizer);
    if !tokenizer_json.is_file() {
        return Err(TextError::MissingTokenizer(tokenizer_json));
    }
    if !model.is_single_file() {
        // A missing `text_encoder/` is named by the weights layer's own message.
        weights::component_dir(&model.encoder, "text_encoder")?;
    }
    let dtype = resolve_dtype(&model.files()?, opts.dtype)?;
    let identity = model_identity(model, &tokenizer_json)?;
    let keys: Vec<String> = prompts
        .iter()
        .map(|p| PromptCache::key(&identity, &prompt_clean(p), opts.max_sequence_length, dtype))
        .collect();
    Ok((dtype, keys))
}

/// Embeddings for each prompt, from `cache` when present; the encoder is loaded only if some prompt
/// is missing, and dropped before returning so the denoiser gets the memory.
pub fn embed_prompts(
    model: &TextModel,
    prompts: &[&str],
    opts: &TextEncoderOptions,
    cache: Option<&PromptCache>,
) -> Result<Vec<Tensor>, TextError> {
    let (dtype, keys) = cache_keys(model, prompts, opts)?;
    let mut out: Vec<Option<Tensor>> = match cache {
        Some(c) => keys.iter().map(|k| c.get(k, &opts.device)).collect::<Result<_, _>>()?,
        None => vec![None; prompts.len()],
    };
    if out.iter().any(Option::is_none) {
        let encoder = TextEncoder::load(model, &TextEncoderOptions { dtype: Some(dtype), ..opts.clone() })?;
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
