//! The UMT5 tokenizer (`tokenizer/tokenizer.json`, a SentencePiece Unigram model saved by
//! `T5TokenizerFast`), called as `WanPipeline._get_t5_prompt_embeds` calls it:
//! `padding="max_length", truncation=True, add_special_tokens=True`.

use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use super::TextError;

/// Token ids and mask of one prompt, padded to `max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// `max_length` ids: the prompt's tokens, `</s>`, then the pad id.
    pub ids: Vec<u32>,
    /// 1 for the prompt's tokens (including `</s>`), 0 for padding.
    pub mask: Vec<u32>,
    /// Number of real tokens (`mask.sum()`), at most `max_length`.
    pub len: usize,
}

#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    path: PathBuf,
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` from `path`: a file, a `tokenizer/` folder or a pipeline root.
    pub fn from_path(path: &Path) -> Result<Self, TextError> {
        let file = tokenizer_file(path);
        if !file.is_file() {
            return Err(TextError::MissingTokenizer(file));
        }
        let mut tokenizer =
            Tokenizer::from_file(&file).map_err(|e| TextError::Tokenizer { path: file.clone(), msg: e.to_string() })?;
        // Padding is done by hand below (to the requested length, with the mask); any padding or
        // truncation stored in the file is not what the pipeline asks for.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| TextError::Tokenizer { path: file.clone(), msg: e.to_string() })?;
        // T5's pad token is `<pad>` (id 0 in every T5/UMT5 vocabulary).
        let pad_id = tokenizer.token_to_id("<pad>").unwrap_or(0);
        Ok(Self { tokenizer, pad_id, path: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokenizes an already cleaned prompt: the prompt's tokens are truncated to leave room for
    /// the special tokens (`</s>`), which are then appended, and the rest is padded — what
    /// `truncation=True, padding="max_length"` does in transformers.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<TokenizedPrompt, TextError> {
        let added = self.tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_length <= added {
            return Err(TextError::BadLength(max_length));
        }
        let err = |e: tokenizers::Error| TextError::Tokenizer { path: self.path.clone(), msg: e.to_string() };
        let mut encoding = self.tokenizer.encode(text, false).map_err(err)?;
        encoding.truncate(max_length - added, 0, TruncationDirection::Right);
        let encoding = self.tokenizer.post_process(encoding, None, true).map_err(err)?;
        let mut ids = encoding.get_ids().to_vec();
        let len = ids.len().min(max_length);
        ids.resize(max_length, self.pad_id);
        let mut mask = vec![1u32; len];
        mask.resize(max_length, 0);
        Ok(TokenizedPrompt { ids, mask, len })
    }
}

/// Where `tokenizer.json` is for `path`: the file itself, `path/tokenizer.json`, or a pipeline
/// root's `path/tokenizer/tokenizer.json` (also the path reported when none exists).
pub fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_file() {
        path.to_path_buf()
    } else if path.join("tokenizer.json").is_file() || path.file_name().is_some_and(|n| n == "tokenizer") {
        path.join("tokenizer.json")
    } else {
        path.join("tokenizer").join("tokenizer.json")
    }
}
