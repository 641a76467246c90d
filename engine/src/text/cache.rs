//! On-disk cache of prompt embeddings: one safetensors file (`prompt_embeds`) per key, where the key
//! is a SHA-256 of the cleaned prompt, the model identity, `max_sequence_length` and the dtype.
//!
//! The model identity is the canonical encoder path (`text_encoder/` or the single file), a hash of
//! its `config.json` (folders), and the name, size and mtime of every weight file and of
//! `tokenizer.json`: replacing or editing any of
//! them invalidates the entries without reading gigabytes of weights to hash them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::TextError;
use crate::model_spec::TextModel;
use crate::tensor_io;

/// The tensor name in cache files (the same name `tessera generate --prompt-embeds` reads).
const TENSOR: &str = "prompt_embeds";

#[derive(Debug, Clone)]
pub struct PromptCache {
    dir: PathBuf,
}

impl PromptCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$TESSERA_CACHE_DIR/prompt-embeds`, else `$XDG_CACHE_HOME/tessera/prompt-embeds`, else
    /// `~/.cache/tessera/prompt-embeds`; `None` when none of these variables is set.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = env("TESSERA_CACHE_DIR") {
            return Some(dir.join("prompt-embeds"));
        }
        let base = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))?;
        Some(base.join("tessera").join("prompt-embeds"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key (hex SHA-256) of a cleaned prompt encoded by the model `identity`.
    pub fn key(identity: &str, cleaned_prompt: &str, max_sequence_length: usize, dtype: DType) -> String {
        let mut h = Sha256::new();
        for part in [identity, cleaned_prompt, &max_sequence_length.to_string(), dtype.as_str()] {
            // Length-prefixed so that no two different tuples hash the same bytes.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// The cached embeddings for `key`, or `None`. An unreadable entry (a crash left it truncated,
    /// a different format) is a miss, logged, and overwritten by the next `put`.
    pub fn get(&self, key: &str, device: &Device) -> Result<Option<Tensor>, TextError> {
        let path = self.path(key);
        if !path.is_file() {
            return Ok(None);
        }
        match tensor_io::read_tensor(&path, TENSOR, DType::F32, device) {
            Ok(t) => {
                tracing::debug!(path = %path.display(), "prompt embeddings cache hit");
                Ok(Some(t))
            }
            Err(e) => {
                tracing::warn!("ignoring unreadable prompt cache entry: {e}");
                Ok(None)
            }
        }
    }

    /// Stores `embeds` under `key` (atomically: readers never see a partial file).
    pub fn put(&self, key: &str, embeds: &Tensor) -> Result<(), TextError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| TextError::Cache { path: self.dir.clone(), msg: format!("cannot create folder: {e}") })?;
        let path = self.path(key);
        tensor_io::write_atomic(&path, &[(TENSOR, embeds.clone())])
            .map_err(|e| TextError::Cache { path, msg: e.to_string() })
    }
}

/// Identity string of a text encoder plus its tokenizer file (see the module doc).
pub fn model_identity(model: &TextModel, tokenizer_json: &Path) -> Result<String, TextError> {
    let io = |path: &Path, e: std::io::Error| TextError::Cache { path: path.to_path_buf(), msg: e.to_string() };
    let path = model.encoder_path()?;
    let encoder = path.canonicalize().map_err(|e| io(&path, e))?;
    let config = model.config_bytes()?;
    let mut id = format!("{}\nconfig {:x}\n", encoder.display(), Sha256::digest(&config));
    let mut files = model.files()?;
    files.push(tokenizer_json.to_path_buf());
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|e| io(f, e))?;
        let mtime =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let name = f.canonicalize().unwrap_or_else(|_| f.clone());
        id.push_str(&format!("{} {} {}\n", name.display(), meta.len(), mtime));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_every_component() {
        let k = PromptCache::key("model-a", "a cat", 512, DType::BF16);
        assert_eq!(k.len(), 64);
        assert_eq!(k, PromptCache::key("model-a", "a cat", 512, DType::BF16));
        assert_ne!(k, PromptCache::key("model-b", "a cat", 512, DType::BF16));
        assert_ne!(k, PromptCache::key("model-a", "a cat ", 512, DType::BF16));
        assert_ne!(k, PromptCache::key("model-a", "a cat", 256, DType::BF16));
        assert_ne!(k, PromptCache::key("model-a", "a cat", 512, DType::F32));
    }

    #[test]
    fn put_then_get_round_trips_and_corrupt_entries_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PromptCache::new(dir.path().join("nested"));
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu).and_then(|t| t.reshape((1, 2, 3))).expect("tensor");
        assert!(cache.get("k", &Device::Cpu).expect("get").is_none());
        cache.put("k", &t).expect("put");
        let back = cache.get("k", &Device::Cpu).expect("get").expect("hit");
        assert_eq!(back.to_vec3::<f32>().expect("vec"), t.to_vec3::<f32>().expect("vec"));
        std::fs::write(cache.path("k"), b"garbage").expect("write");
        assert!(cache.get("k", &Device::Cpu).expect("get").is_none());
    }
}
