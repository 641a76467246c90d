//! [`Settings`]: what a generation was asked for, as JSON inside every MP4 and PNG Tessera writes
//! (`media` puts the text in the file; `tessera info FILE` and the studio's "Load settings from
//! file…" read it back). One type for writing and reading, so the two cannot drift.
//!
//! Model files are named with a short hash ([`short_hash`]): enough to tell two checkpoints
//! apart and to find the right file again, cheap enough to compute for a 28 GB model at every save.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::request::{GenerationRequest, Prompt};
use crate::media::{self, MediaError};
use crate::model_spec::{ModelFiles, ModelSpec};
use crate::parallel::plan::ParallelPlan;
use crate::pipeline::request::GenerateParams;

/// The generation settings of an output file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The Tessera version that wrote the file (`tessera 0.1.0`).
    pub tessera: String,
    /// The model as given (a pipeline folder, a folder of single files, a transformer file, or
    /// empty when `model_files` names the transformer).
    pub model: PathBuf,
    /// Component files, `--config` and LoRAs with their strengths, as given.
    #[serde(default)]
    pub model_files: ModelFiles,
    /// Every weight file of the model and every LoRA file, with its size and short hash.
    pub files: Vec<ModelFile>,
    pub prompt: Prompt,
    /// The negative prompt when one was used (CFG on), else `None`.
    pub negative_prompt: Option<Prompt>,
    pub image: Option<PathBuf>,
    /// Initial noise read from a file (else seeded noise from `seed`).
    pub latents: Option<PathBuf>,
    /// Size, frames, steps, guidance(s), shift, seed, scheduler and sigmas.
    #[serde(flatten)]
    pub params: GenerateParams,
    /// Frame rate of the written video.
    pub fps: Option<f64>,
    pub plan: ParallelPlan,
}

/// One weight file of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// `transformer`, `transformer_2`, `vae`, `text_encoder` or `lora`.
    pub component: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// [`short_hash`] of the file.
    pub hash: String,
}

/// Why settings could not be read from a file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(
        "{0} carries no Tessera settings (it was not written by Tessera, or by a version before settings were saved)"
    )]
    Missing(PathBuf),
    #[error("{path}: the settings do not parse: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl Settings {
    /// The settings of `req` on `model` (its files hashed now), with the video's frame rate.
    pub fn of_request(req: &GenerationRequest, model: &ModelSpec, fps: Option<f64>) -> Result<Self, SettingsError> {
        let c = &model.components;
        let mut named: Vec<(&str, PathBuf)> = Vec::new();
        let parts =
            [("transformer", Some(&c.transformer)), ("transformer_2", c.transformer_2.as_ref()), ("vae", Some(&c.vae))];
        for (component, part) in parts {
            named.extend(part.into_iter().flat_map(|p| p.files.iter().map(move |f| (component, f.clone()))));
        }
        if let Some(dir) = &c.text_encoder {
            named.extend(weight_files(dir)?.into_iter().map(|f| ("text_encoder", f)));
        }
        named.extend(req.files.loras.iter().map(|l| ("lora", l.path.clone())));
        let mut files = Vec::new();
        for (component, file) in named {
            let io = |source| SettingsError::Io { path: file.clone(), source };
            let bytes = std::fs::metadata(&file).map_err(io)?.len();
            let hash = short_hash(&file).map_err(io)?;
            files.push(ModelFile { component: component.into(), path: file, bytes, hash });
        }
        Ok(Self {
            tessera: format!("tessera {}", env!("CARGO_PKG_VERSION")),
            model: req.model.clone(),
            model_files: req.files.clone(),
            files,
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt(model),
            image: req.image.clone(),
            latents: req.latents.clone(),
            params: req.params.clone(),
            fps,
            plan: req.plan,
        })
    }

    /// Compact JSON with every non-ASCII character escaped (`\u00e9`), so the text fits a PNG
    /// `tEXt` chunk (Latin-1) unchanged and is still the same JSON.
    pub fn to_json(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut out = String::with_capacity(json.len());
        for ch in json.chars() {
            if ch.is_ascii() {
                out.push(ch);
            } else {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        out
    }

    /// The settings inside a Tessera MP4 or PNG.
    pub fn read(path: &Path) -> Result<Self, SettingsError> {
        let text = media::read_metadata(path)?.ok_or_else(|| SettingsError::Missing(path.to_path_buf()))?;
        serde_json::from_str(&text).map_err(|source| SettingsError::Parse { path: path.to_path_buf(), source })
    }
}

/// The text encoder's weight files: the file itself, or the `.safetensors` files of its folder.
fn weight_files(path: &Path) -> Result<Vec<PathBuf>, SettingsError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let io = |source| SettingsError::Io { path: path.to_path_buf(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// Bytes hashed at each end of a file.
const HASH_SPAN: u64 = 1 << 20;

/// The first 12 hex digits of SHA-256 over the file's length, its first MiB (the safetensors
/// header: every name, shape and dtype, then the first weights) and its last MiB. A quick identity,
/// not a checksum of every byte: reading 2 MiB costs milliseconds where hashing 28 GB costs minutes.
pub fn short_hash(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = Sha256::new();
    hasher.update(len.to_le_bytes());
    let mut head = Vec::new();
    (&mut file).take(HASH_SPAN).read_to_end(&mut head)?;
    hasher.update(&head);
    if len > HASH_SPAN {
        file.seek(SeekFrom::Start(len - HASH_SPAN))?;
        let mut tail = Vec::new();
        file.take(HASH_SPAN).read_to_end(&mut tail)?;
        hasher.update(&tail);
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline"))
    }

    #[test]
    fn settings_name_every_weight_file_and_survive_json() {
        let root = golden();
        let spec = ModelSpec::from_path(&root).unwrap();
        let params = GenerateParams {
            height: 96,
            width: 128,
            frames: 9,
            steps: 4,
            guidance: 1.0,
            guidance_2: None,
            shift: Some(5.0),
            seed: 3,
            scheduler: Some(crate::scheduler::SchedulerKind::Euler),
            sigmas: Some(vec![1.0, 0.75, 0.5, 0.25]),
        };
        let req = GenerationRequest::new(&root, Prompt::Text("un renard é 🦊".into()), params);
        let s = Settings::of_request(&req, &spec, Some(24.0)).unwrap();
        let components: Vec<&str> = s.files.iter().map(|f| f.component.as_str()).collect();
        assert_eq!(components, ["transformer", "vae"]);
        assert!(s.files.iter().all(|f| f.hash.len() == 12 && f.bytes > 0));
        assert_eq!(s.negative_prompt, None, "guidance 1: no negative branch");
        let json = s.to_json();
        assert!(
            json.is_ascii()
                && json.contains(r#""scheduler":"euler""#)
                && json.contains(r#""sigmas":[1.0,0.75,0.5,0.25]"#)
        );
        assert!(json.contains(r"\u00e9") && json.contains(r"\ud83e\udd8a"), "{json}");
        let back: Settings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn short_hashes_tell_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        let mut big = vec![7u8; 3 << 20];
        std::fs::write(&a, &big).unwrap();
        big[(3 << 20) - 1] = 8; // the last byte only
        std::fs::write(&b, &big).unwrap();
        std::fs::write(&c, b"small").unwrap();
        let (ha, hb, hc) = (short_hash(&a).unwrap(), short_hash(&b).unwrap(), short_hash(&c).unwrap());
        assert_ne!(ha, hb);
        assert_ne!(ha, hc);
        assert_eq!(ha, short_hash(&a).unwrap());
    }
}
