//! HunyuanVideo 1.5's glyph encoder input and output, exactly as
//! `HunyuanVideo15Pipeline._get_byt5_prompt_embeds` makes them: the quoted text of the prompt
//! ([`super::hv15::glyph_text`]) through `tokenizer_2/` (transformers' `ByT5Tokenizer`: UTF-8 bytes
//! plus 3, the added tokens of `tokenizer_config.json` matched first, `</s>` appended, truncation
//! keeping it) and `text_encoder_2/` (a `T5EncoderModel`, our [`UMT5EncoderModel`] with
//! `model_type: "t5"`).
//!
//! The pipeline pads to `tokenizer_max_length` and masks the padding; a T5 encoder is bidirectional
//! but padding keys get zero attention weight and the relative bias depends only on offsets, so the
//! valid rows of the padded run are the unpadded run: this module runs unpadded and returns valid
//! rows only (what the transformer's trimmed context takes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::TextError;
use crate::models::umt5::{Config, UMT5EncoderModel};
use crate::weights::{self, Checkpoint};

/// `HunyuanVideo15Pipeline.tokenizer_2_max_length`: glyph tokens per prompt, `</s>` included.
pub const MAX_LENGTH: usize = 256;

/// ByT5's fixed ids: `<pad>` 0, `</s>` 1, `<unk>` 2, then the 256 bytes.
const EOS: u32 = 1;
const BYTE_OFFSET: u32 = 3;

/// One added token of `tokenizer_config.json` (`added_tokens_decoder`).
#[derive(Debug, Clone, serde::Deserialize)]
struct AddedToken {
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
}

#[derive(serde::Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    added_tokens_decoder: HashMap<String, AddedToken>,
    #[serde(default)]
    tokenizer_class: Option<String>,
}

/// transformers' `ByT5Tokenizer` of a `tokenizer_2/` folder.
#[derive(Debug, Clone)]
pub struct ByT5Tokenizer {
    /// Added tokens, longest first (so `<extra_id_10>` wins over `<extra_id_1>`).
    added: Vec<(AddedToken, u32)>,
}

impl ByT5Tokenizer {
    /// Reads `tokenizer_config.json` from `dir` (the `tokenizer_2/` folder or a pipeline root).
    pub fn from_path(dir: &Path) -> Result<Self, TextError> {
        let dir = if dir.join("tokenizer_2").is_dir() { dir.join("tokenizer_2") } else { dir.to_path_buf() };
        let file = dir.join("tokenizer_config.json");
        let err = |msg: String| TextError::Tokenizer { path: file.clone(), msg };
        let text = std::fs::read_to_string(&file).map_err(|e| err(e.to_string()))?;
        let cfg: TokenizerConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Some(class) = cfg.tokenizer_class.as_deref().filter(|c| *c != "ByT5Tokenizer") {
            return Err(err(format!("tokenizer_class {class:?}: the glyph encoder needs a ByT5Tokenizer")));
        }
        let mut added = cfg
            .added_tokens_decoder
            .into_iter()
            .map(|(id, t)| id.parse::<u32>().map(|id| (t, id)).map_err(|e| err(format!("added token id {id:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        added.retain(|(t, _)| !t.content.is_empty());
        added.sort_by(|a, b| b.0.content.len().cmp(&a.0.content.len()).then(a.1.cmp(&b.1)));
        Ok(Self { added })
    }

    /// The longest added token starting at byte `at` of `text`.
    fn added_at(&self, text: &str, at: usize) -> Option<&(AddedToken, u32)> {
        self.added.iter().find(|(t, _)| text[at..].starts_with(t.content.as_str()))
    }

    /// `tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True).input_ids`:
    /// added tokens split out first (whitespace next to an `lstrip`/`rstrip` one dropped), every
    /// other byte as `byte + 3`, cut to `max_length − 1`, then `</s>` (unless the text already
    /// ends with it, as `_add_eos_if_not_present`).
    pub fn ids(&self, text: &str, max_length: usize) -> Result<Vec<u32>, TextError> {
        if max_length < 1 {
            return Err(TextError::BadLength(max_length));
        }
        let mut ids: Vec<u32> = Vec::with_capacity(text.len() + 1);
        let mut plain = String::new();
        let flush = |plain: &mut String, ids: &mut Vec<u32>, strip_end: bool| {
            let s = if strip_end { plain.trim_end() } else { plain.as_str() };
            ids.extend(s.bytes().map(|b| b as u32 + BYTE_OFFSET));
            plain.clear();
        };
        let mut at = 0;
        let mut skip_space = false;
        while at < text.len() {
            if let Some((tok, id)) = self.added_at(text, at) {
                flush(&mut plain, &mut ids, tok.lstrip);
                ids.push(*id);
                at += tok.content.len();
                skip_space = tok.rstrip;
                continue;
            }
            let c = text[at..].chars().next().expect("in bounds");
            if !(skip_space && c.is_whitespace()) {
                plain.push(c);
                skip_space = false;
            }
            at += c.len_utf8();
        }
        flush(&mut plain, &mut ids, false);
        ids.truncate(max_length - 1);
        if ids.last() != Some(&EOS) {
            ids.push(EOS);
        }
        Ok(ids)
    }
}

/// The glyph encoder of an HV1.5 folder: `tokenizer_2/` and `text_encoder_2/`.
#[derive(Debug)]
pub struct GlyphEncoder {
    tokenizer: ByT5Tokenizer,
    model: UMT5EncoderModel,
}

impl GlyphEncoder {
    /// Loads `tokenizer_2/` and `text_encoder_2/` (a T5 config) of the pipeline folder `root`, in
    /// the checkpoint's stored dtype promoted to f32 (the encoder is small; the pipeline runs it in
    /// the text encoder's dtype, f32 on CPU).
    pub fn load(root: &Path, device: &Device) -> Result<Self, TextError> {
        let tokenizer = ByT5Tokenizer::from_path(&root.join("tokenizer_2"))?;
        let dir: PathBuf = root.join("text_encoder_2");
        let cfg: Config = weights::load_config(&dir)?;
        if !cfg.shares_relative_bias()? {
            return Err(TextError::Model(candle_core::Error::msg(format!(
                "{}: model_type {:?}, the glyph encoder is a T5 encoder (\"t5\")",
                dir.display(),
                cfg.model_type
            ))));
        }
        let vb = Checkpoint::open(&dir)?.var_builder(DType::F32, device)?;
        let model = UMT5EncoderModel::new(&cfg, vb)?;
        Ok(Self { tokenizer, model })
    }

    pub fn tokenizer(&self) -> &ByT5Tokenizer {
        &self.tokenizer
    }

    /// `prompt_embeds_2` of `prompt`, valid rows only `[1, M, d_model]` f32, or `None` when the
    /// prompt has no quoted text (the pipeline's zeros with a zero mask).
    pub fn embeds(&self, prompt: &str, max_length: usize) -> Result<Option<Tensor>, TextError> {
        let Some(glyph) = super::hv15::glyph_text(prompt) else { return Ok(None) };
        let ids = self.tokenizer.ids(&glyph, max_length)?;
        let n = ids.len();
        let ids = Tensor::from_vec(ids, (1, n), self.model.device())?;
        Ok(Some(self.model.forward(&ids, None)?))
    }
}
