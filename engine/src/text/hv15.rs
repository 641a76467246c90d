//! HunyuanVideo 1.5's MLLM prompt, exactly as `HunyuanVideo15Pipeline._get_mllm_prompt_embeds` builds
//! it: the Qwen2.5-VL chat template `[system: SYSTEM_MESSAGE, user: prompt]` with the generation
//! prompt, tokenized by the folder's `tokenizer/tokenizer.json` (byte-level BPE; the chat markers are
//! its added special tokens), truncated to `max_length + crop_start` tokens, then
//! `hidden_states[-3]` of the Qwen text model with the first `crop_start` tokens (the system turn and
//! `<|im_start|>user\n`) cut.
//!
//! Right padding under a causal model leaves the valid rows as an unpadded run computes them, so the
//! sequence runs unpadded and only valid rows come out (what the transformer's trimmed context takes).
//! `crop_start` is counted from the tokenizer (the official repo's marker method; the pipeline
//! hard-codes 108, which is that count for the real Qwen2.5-VL tokenizer).

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;

use super::cache::{model_identity, PromptCache};
use super::TextError;
use crate::model_spec::TextModel;
use crate::models::qwen25vl_text::Qwen25VlTextModel;

/// The pipeline's system message, with the 8-space runs its backslash line continuations leave
/// (`crop_start` depends on this exact whitespace).
pub const SYSTEM_MESSAGE: &str = "You are a helpful assistant. Describe the video by detailing the following aspects:         1. The main content and theme of the video.         2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.         3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.         4. background environment, light, style and atmosphere.         5. camera angles, movements, and transitions used in the video.";

/// `encode_prompt`'s `tokenizer_max_length`: prompt tokens kept after the crop.
pub const MAX_LENGTH: usize = 1000;

/// `num_hidden_layers_to_skip`: the embedding is `hidden_states[-3]`.
const LAYERS_TO_SKIP: usize = 2;

/// The pipeline's hard-coded `crop_start`: the real Qwen2.5-VL tokenizer's count of template
/// prefix tokens (the encoder runs over them too; the planner sizes a prompt with it).
pub const PIPELINE_CROP_START: usize = 108;

/// The chat template rendered for `[system, user]` with `add_generation_prompt=True`; an empty
/// prompt becomes `" "` (the pipeline's `format_text_input`).
pub fn chat_template(prompt: &str, system: &str) -> String {
    let user = if prompt.is_empty() { " " } else { prompt };
    format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// The MLLM tokenizer of an HV1.5 folder and its crop.
#[derive(Debug, Clone)]
pub struct MllmTokenizer {
    tokenizer: Tokenizer,
    crop_start: usize,
    path: PathBuf,
}

impl MllmTokenizer {
    /// Loads `tokenizer.json` from `path` (a file, a `tokenizer/` folder or a pipeline root) and
    /// counts its `crop_start`.
    pub fn from_path(path: &Path) -> Result<Self, TextError> {
        let file = super::tokenizer::tokenizer_file(path);
        if !file.is_file() {
            return Err(TextError::MissingTokenizer(file));
        }
        let err = |e: tokenizers::Error| TextError::Tokenizer { path: file.clone(), msg: e.to_string() };
        let mut tokenizer = Tokenizer::from_file(&file).map_err(err)?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(err)?;
        for marker in ["<|im_start|>", "<|im_end|>"] {
            if tokenizer.token_to_id(marker).is_none() {
                return Err(TextError::Tokenizer {
                    path: file.clone(),
                    msg: format!("no {marker} token: not a Qwen2.5-VL tokenizer"),
                });
            }
        }
        let mut me = Self { tokenizer, crop_start: 0, path: file };
        let prefix = format!("<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n");
        me.crop_start = me.tokens(&prefix)?.len();
        Ok(me)
    }

    /// Tokens of the template prefix (system turn and `<|im_start|>user\n`) the pipeline cuts.
    pub fn crop_start(&self) -> usize {
        self.crop_start
    }

    fn tokens(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TextError::Tokenizer { path: self.path.clone(), msg: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The valid token ids of `prompt`'s chat template, truncated (on the right, as
    /// `truncation=True`) to `max_length + crop_start`: the unpadded row of the pipeline's batch.
    pub fn ids(&self, prompt: &str, max_length: usize) -> Result<Vec<u32>, TextError> {
        let mut ids = self.tokens(&chat_template(prompt, SYSTEM_MESSAGE))?;
        ids.truncate(max_length + self.crop_start);
        Ok(ids)
    }
}

/// `num_hidden_layers_to_skip`'s hidden state as a layer count: `hidden_states[-3]` of a model of
/// `num_hidden_layers` is the output of its first `num_hidden_layers − 2` decoder layers (the later
/// ones never run).
pub fn layers_taken(num_hidden_layers: usize) -> usize {
    num_hidden_layers.saturating_sub(LAYERS_TO_SKIP)
}

/// The valid ids of `prompt` (see [`MllmTokenizer::ids`]), refused when nothing is left after the
/// crop.
pub(crate) fn prompt_ids(tokenizer: &MllmTokenizer, prompt: &str, max_length: usize) -> Result<Vec<u32>, TextError> {
    let ids = tokenizer.ids(prompt, max_length)?;
    if ids.len() <= tokenizer.crop_start() {
        return Err(TextError::BadLength(max_length));
    }
    Ok(ids)
}

/// The pipeline's cut of the taken hidden state `[N, hidden]`: the rows after the template prefix,
/// `[1, N − crop_start, hidden]`.
pub(crate) fn crop_prompt_rows(hidden: &Tensor, crop_start: usize) -> Result<Tensor, TextError> {
    let n = hidden.dim(0)?;
    Ok(hidden.narrow(0, crop_start, n - crop_start)?.unsqueeze(0)?)
}

/// `prompt_embeds` of one prompt, valid rows only: `[1, N, hidden]` with `N ≤ max_length`.
pub fn mllm_embeds(
    model: &Qwen25VlTextModel,
    tokenizer: &MllmTokenizer,
    prompt: &str,
    max_length: usize,
) -> Result<Tensor, TextError> {
    let ids = prompt_ids(tokenizer, prompt, max_length)?;
    let hidden = model.hidden(&ids, layers_taken(model.config().num_hidden_layers))?;
    crop_prompt_rows(&hidden, tokenizer.crop_start())
}

/// The dtype the Qwen text model runs in: f32 on the CPU (the host, or CPU workers), the
/// checkpoint's on a GPU (bf16 for the published weights), as the UMT5 split runs.
pub fn run_dtype(model: &TextModel, on_cpu: bool) -> Result<DType, TextError> {
    if on_cpu {
        return Ok(DType::F32);
    }
    super::encoder::resolve_dtype(&model.files()?, None)
}

/// The on-disk cache key of `prompt`'s [`mllm_embeds`] by the Qwen text model of `model` run in
/// `dtype` ([`run_dtype`]: a bf16 GPU run's embeddings are not the f32 host's): the model's
/// identity (its `config.json`, weight files and `tokenizer.json`, as for UMT5), this extraction
/// (system message, `hidden_states[-3]`, crop) and the length. Nothing is read but metadata, so a
/// cache hit never maps the 7 B-parameter model.
pub fn cache_key(model: &TextModel, prompt: &str, max_length: usize, dtype: DType) -> Result<String, TextError> {
    let tokenizer_json = super::tokenizer::tokenizer_file(&model.tokenizer);
    let identity = model_identity(model, &tokenizer_json)?;
    let extraction = format!("hunyuanvideo-1.5 mllm: hidden_states[-{}], {SYSTEM_MESSAGE}", LAYERS_TO_SKIP + 1);
    Ok(PromptCache::key(&format!("{identity}{extraction}"), prompt, max_length, dtype))
}

/// The ByT5 input of `prompt` as `extract_glyph_texts` makes it: every `"…"` or `“…”` (non-greedy,
/// not across a newline, empty quotes kept; an unclosed quote is skipped), de-duplicated in order
/// when there are two or more, written `Text "a". Text "b". `; `None` without quoted text.
pub fn glyph_text(prompt: &str) -> Option<String> {
    let chars: Vec<char> = prompt.chars().collect();
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let close = match chars[i] {
            '"' => Some('"'),
            '\u{201c}' => Some('\u{201d}'),
            _ => None,
        };
        let rest = &chars[i + 1..];
        if let Some(len) = close.and_then(|c| rest.iter().take_while(|x| **x != '\n').position(|x| *x == c)) {
            found.push(rest[..len].iter().collect());
            i += len + 2;
        } else {
            i += 1;
        }
    }
    if found.len() > 1 {
        let mut seen = std::collections::HashSet::new();
        found.retain(|t| seen.insert(t.clone()));
    }
    if found.is_empty() {
        return None;
    }
    Some(found.iter().map(|t| format!("Text \"{t}\"")).collect::<Vec<_>>().join(". ") + ". ")
}
