//! Where a model's prompt encoder lives: the UMT5 weights (a diffusers `text_encoder/` folder, or one
//! single file such as ComfyUI's `umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors`)
//! and its tokenizer (`tokenizer.json`, a `tokenizer/` folder or a pipeline root). Plain data: it
//! travels in the text job; the encoders in `text/` load from it.
//!
//! A single file holds the transformers names ComfyUI's T5 module uses (`shared.weight`,
//! `encoder.block.N.layer.0.SelfAttention.q`, …, `encoder.final_layer_norm.weight`), with or
//! without `encoder.embed_tokens.weight` (tied to `shared`), optionally under a checkpoint prefix
//! (`text_encoders.umt5xxl.transformer.`), f32/bf16/f16 or fp8 "scaled" as the transformer files.
//! Shapes settle every dimension — vocabulary and width (`shared`), layers, heads and buckets (each
//! UMT5 layer's own `relative_attention_bias` is `[buckets, heads]`), `d_kv`, `d_ff`, gating — except
//! `relative_attention_max_distance` and the norm epsilon, which are the published UMT5-XXL's (128,
//! 1e-6) and said so. The tokenizer cannot come from the file: ComfyUI stores a SentencePiece
//! protobuf (`spiece_model`) there, which is not a `tokenizer.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelSpecError;
use crate::models::umt5::config::Config as Umt5Config;
use crate::weights::{self, Checkpoint, ComponentWeights, Rename};

/// The UMT5 encoder and tokenizer of a model.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TextModel {
    /// A pipeline root (its `text_encoder/`), a `text_encoder/` folder, or a single file.
    pub encoder: PathBuf,
    /// `tokenizer.json`, a `tokenizer/` folder, or a pipeline root (its `tokenizer/`).
    pub tokenizer: PathBuf,
}

impl TextModel {
    /// The `text_encoder/` and `tokenizer/` of a diffusers pipeline folder.
    pub fn in_folder(root: &Path) -> Self {
        Self { encoder: root.to_path_buf(), tokenizer: root.to_path_buf() }
    }

    /// Whether the encoder is a single file.
    pub fn is_single_file(&self) -> bool {
        self.encoder.is_file()
    }

    /// The encoder file, or its `text_encoder/` folder (a pipeline root resolved): one model, one
    /// path, however it was given.
    pub fn encoder_path(&self) -> Result<PathBuf, ModelSpecError> {
        if self.is_single_file() {
            Ok(self.encoder.clone())
        } else {
            self.dir()
        }
    }

    /// The `text_encoder/` folder (folders only).
    fn dir(&self) -> Result<PathBuf, ModelSpecError> {
        weights::component_dir(&self.encoder, "text_encoder")
            .map_err(|e| ModelSpecError::Read { path: self.encoder.clone(), msg: e.to_string() })
    }

    /// The weight files.
    pub fn files(&self) -> Result<Vec<PathBuf>, ModelSpecError> {
        if self.is_single_file() {
            return Ok(vec![self.encoder.clone()]);
        }
        let dir = self.dir()?;
        Ok(Checkpoint::open(&dir).map_err(|e| ModelSpecError::Read { path: dir.clone(), msg: e.to_string() })?.files)
    }

    /// The encoder's `config.json` bytes (folders), for the prompt cache's model identity.
    pub fn config_bytes(&self) -> Result<Vec<u8>, ModelSpecError> {
        if self.is_single_file() {
            return Ok(Vec::new());
        }
        let path = self.dir()?.join("config.json");
        std::fs::read(&path).map_err(|e| ModelSpecError::Read { path, msg: e.to_string() })
    }

    /// The encoder's config: its folder's `config.json`, or what a single file's shapes imply.
    pub fn config(&self) -> Result<Umt5Config, ModelSpecError> {
        if !self.is_single_file() {
            let dir = self.dir()?;
            return weights::load_config(&dir).map_err(|e| ModelSpecError::Invalid {
                component: "text_encoder",
                path: dir,
                msg: e.to_string(),
            });
        }
        let table = self.weights()?.table().map_err(|e| read_error(&self.encoder, e))?;
        let shapes = super::single_file::shapes(&table);
        infer_umt5(&shapes, &self.encoder)
    }

    /// The weights as the encoders read them (transformers names; fp8 dequantised).
    pub fn weights(&self) -> Result<ComponentWeights, ModelSpecError> {
        let files = self.files()?;
        if !self.is_single_file() {
            return Ok(ComponentWeights::diffusers(files));
        }
        let (keys, _) = weights::table::header_keys(&self.encoder).map_err(|e| read_error(&self.encoder, e))?;
        let prefix = super::single_file::TEXT_PREFIXES
            .iter()
            .find(|p| keys.keys().any(|k| k.starts_with(*p)))
            .map(|p| p.to_string())
            .unwrap_or_default();
        let rename: std::sync::Arc<Rename> = std::sync::Arc::new(move |k: &str| {
            let k = k.strip_prefix(prefix.as_str())?;
            // ComfyUI keeps its SentencePiece model in the file: not a tensor of the encoder.
            (k != "spiece_model").then(|| k.to_string())
        });
        Ok(ComponentWeights::renamed(files, rename))
    }

    /// One line for people: what the encoder is.
    pub fn describe(&self) -> String {
        format!("UMT5 {} + tokenizer {}", self.encoder.display(), self.tokenizer.display())
    }
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> ModelSpecError {
    ModelSpecError::Read { path: path.to_path_buf(), msg: e.to_string() }
}

/// The UMT5 config tensor shapes (transformers names) imply; see the module docs for the two
/// published values.
pub fn infer_umt5(shapes: &super::single_file::Shapes, path: &Path) -> Result<Umt5Config, ModelSpecError> {
    let invalid = |msg: String| ModelSpecError::Invalid { component: "text_encoder", path: path.to_path_buf(), msg };
    let need = |name: &str| {
        shapes.get(name).cloned().ok_or_else(|| invalid(format!("no {name} tensor: not a whole UMT5 encoder")))
    };
    let embed = match shapes.get("shared.weight") {
        Some(s) => s.clone(),
        None => need("encoder.embed_tokens.weight")?,
    };
    let bias = need("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
    let q = need("encoder.block.0.layer.0.SelfAttention.q.weight")?;
    let gated = shapes.contains_key("encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
    let wi = need(if gated {
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    } else {
        "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    })?;
    let num_layers = shapes
        .keys()
        .filter_map(|n| n.strip_prefix("encoder.block.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let [vocab_size, d_model] = embed[..] else { return Err(invalid("the embedding is not 2-D".into())) };
    let [buckets, heads] = bias[..] else { return Err(invalid("relative_attention_bias is not 2-D".into())) };
    if heads == 0 || q.first().is_none_or(|inner| inner % heads != 0) {
        return Err(invalid(format!("q projection {q:?} does not split into {heads} heads")));
    }
    Ok(Umt5Config {
        model_type: "umt5".into(),
        vocab_size,
        d_model,
        d_kv: q[0] / heads,
        d_ff: wi[0],
        num_layers,
        num_heads: heads,
        relative_attention_num_buckets: buckets,
        // Published UMT5 (google/umt5-xxl) values: no tensor holds them.
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: if gated { "gated-gelu" } else { "relu" }.into(),
        pad_token_id: 0,
        eos_token_id: 1,
    })
}
