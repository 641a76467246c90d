//! What a user names besides (or instead of) a model folder: component files
//! (`--transformer`, `--transformer-2`, `--vae`, `--text-encoder`, `--tokenizer`), a config source for dimensions shapes cannot
//! settle (`--config`), and LoRAs (`--lora FILE[:STRENGTH][@high|@low]`). Plain data: it travels in
//! the request and the worker's job, and keys the weights a worker keeps resident.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which expert(s) of the model a LoRA goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    /// Every transformer (both A14B experts; the one transformer otherwise).
    #[default]
    All,
    /// `@high`: `transformer`, A14B's high-noise expert.
    High,
    /// `@low`: `transformer_2`, A14B's low-noise expert.
    Low,
}

impl LoraTarget {
    /// Whether the LoRA applies to expert `index` (0 = `transformer`, 1 = `transformer_2`).
    pub fn applies_to(self, index: usize) -> bool {
        match self {
            LoraTarget::All => true,
            LoraTarget::High => index == 0,
            LoraTarget::Low => index == 1,
        }
    }
}

/// One `--lora FILE[:STRENGTH][@high|@low]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub path: PathBuf,
    /// The adapter weight (diffusers' `set_adapters` weight, ComfyUI's strength); 1 by default.
    pub strength: f64,
    pub target: LoraTarget,
}

impl FromStr for LoraSpec {
    type Err = String;

    /// `FILE`, `FILE:0.7`, `FILE@high`, `FILE:0.7@low`. A `:` not followed by a number stays part of
    /// the path.
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, target) = if let Some(r) = s.strip_suffix("@high") {
            (r, LoraTarget::High)
        } else if let Some(r) = s.strip_suffix("@low") {
            (r, LoraTarget::Low)
        } else {
            (s, LoraTarget::All)
        };
        let (path, strength) = match rest.rsplit_once(':') {
            Some((p, w)) if !p.is_empty() && w.parse::<f64>().is_ok() => (p, w.parse::<f64>().unwrap_or(1.0)),
            _ => (rest, 1.0),
        };
        if path.is_empty() {
            return Err(format!("{s:?}: expected FILE[:STRENGTH][@high|@low], e.g. lightx2v.safetensors:0.7@high"));
        }
        if !strength.is_finite() {
            return Err(format!("{s:?}: the strength must be a number"));
        }
        Ok(Self { path: PathBuf::from(path), strength, target })
    }
}

impl std::fmt::Display for LoraSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.strength)?;
        match self.target {
            LoraTarget::All => Ok(()),
            LoraTarget::High => write!(f, "@high"),
            LoraTarget::Low => write!(f, "@low"),
        }
    }
}

/// Component files, a config source and LoRAs for a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelFiles {
    /// A transformer checkpoint file (diffusers or Wan-native names, f32/bf16/f16/fp8).
    pub transformer: Option<PathBuf>,
    /// A14B's low-noise expert.
    pub transformer_2: Option<PathBuf>,
    /// A VAE file (diffusers names, or Wan-native Wan2.1 / Wan2.2 VAE names).
    pub vae: Option<PathBuf>,
    /// A UMT5 text-encoder file (ComfyUI's `umt5_xxl_*.safetensors`) or `text_encoder/` folder.
    pub text_encoder: Option<PathBuf>,
    /// Its `tokenizer.json` or a folder holding one.
    pub tokenizer: Option<PathBuf>,
    /// `config.json` of a component, a component folder, or a pipeline folder whose configs
    /// describe the files (finetunes, tiny test models).
    pub config: Option<PathBuf>,
    pub loras: Vec<LoraSpec>,
}

impl ModelFiles {
    /// No files, no config, no LoRAs: the folder alone.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_flags_parse() {
        let l: LoraSpec = "a/b.safetensors".parse().unwrap();
        assert_eq!((l.path, l.strength, l.target), (PathBuf::from("a/b.safetensors"), 1.0, LoraTarget::All));
        let l: LoraSpec = "x.safetensors:0.7@high".parse().unwrap();
        assert_eq!((l.strength, l.target), (0.7, LoraTarget::High));
        let l: LoraSpec = "C:dir/x.safetensors@low".parse().unwrap();
        assert_eq!((l.path, l.strength, l.target), (PathBuf::from("C:dir/x.safetensors"), 1.0, LoraTarget::Low));
        assert!("@high".parse::<LoraSpec>().is_err());
        assert_eq!("x:0.5@low".parse::<LoraSpec>().unwrap().to_string(), "x:0.5@low");
    }
}
