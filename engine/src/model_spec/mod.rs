//! The one reader of a model on disk: [`ModelSpec::from_path`] inspects a model folder once and says
//! what it is (family, variant, layout), which components it has and where, their configs, weight
//! sizes and dtype, and what a request must respect (size multiple, I2V input, experts, default fps).
//! The CLI, the studio, the planner and the workers all take their facts from it.
//!
//! - [`index`]: `model_index.json`, the fields the pipelines read.
//! - [`files`]: component files, `--config` and LoRAs a user gives besides (or instead of) a folder.
//! - [`single_file`]: what a single file holds, its key dialect, the config its shapes imply and
//!   the published pipeline settings shapes cannot tell.
//! - [`text`]: the UMT5 encoder and tokenizer ([`TextModel`]): a folder or a single file.
//! - [`weights_info`]: stored bytes and dtype of a component, from safetensors headers only.
//! - [`demo`]: `demo.json`, the defaults and vocabulary of a narrow model (the built-in demo).
//!
//! A model is a diffusers pipeline folder, a folder of single files (ComfyUI's), or component files
//! alone ([`ModelSpec::open`]); with a folder, each file flag replaces that component and the
//! folder's config describes it. Only configs and safetensors headers are read, so inspecting a
//! 60 GB checkpoint is instant, and a folder with configs but no weights (a model not downloaded
//! yet) can still be planned for. The loaders take their weights from here
//! ([`ModelSpec::transformer_weights`] with the LoRAs merged, [`ModelSpec::vae_weights`]); nothing
//! downstream reads folders itself. New families (HunyuanVideo 1.5) add a [`Family`] variant and a
//! detection branch here.

pub mod demo;
pub mod files;
pub mod hv15;
pub mod index;
pub mod single_file;
pub mod text;
pub mod weights_info;

use std::path::{Path, PathBuf};

pub use demo::DemoInfo;
pub use files::{LoraSpec, LoraTarget, ModelFiles};
pub use hv15::Hv15Configs;
pub use index::ModelIndex;
pub use text::TextModel;
pub use weights_info::WeightsInfo;

use crate::models::wan::checkpoint_keys::{self, KeyDialect};
use crate::models::wan::lora::{LoraError, LoraPlan};
use crate::weights::{Checkpoint, ComponentWeights, Deltas, WeightsError};

use crate::models::umt5::config::Config as Umt5Config;
use crate::models::wan::transformer::config::Config as DitConfig;
use crate::models::wan::vae::config::Config as VaeConfig;

/// Model families Tessera runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// Wan2.1 / Wan2.2 (`WanPipeline`, `WanImageToVideoPipeline`).
    Wan,
    /// HunyuanVideo 1.5 (`HunyuanVideo15Pipeline`, `HunyuanVideo15ImageToVideoPipeline`).
    HunyuanVideo15,
}

impl Family {
    pub fn describe(self) -> &'static str {
        match self {
            Family::Wan => "Wan",
            Family::HunyuanVideo15 => "HunyuanVideo 1.5",
        }
    }

    /// The family of a pipeline folder (`model_index.json`'s `_class_name`) or of a component
    /// folder (its `config.json`'s `_class_name`: a VAE or transformer given alone).
    pub fn detect(path: &Path) -> Result<Self, ModelSpecError> {
        let (file, component) = if path.join("model_index.json").is_file() {
            (path.join("model_index.json"), "model_index.json")
        } else {
            (path.join("config.json"), "config.json")
        };
        #[derive(serde::Deserialize)]
        struct ClassName {
            #[serde(rename = "_class_name", default)]
            class_name: String,
        }
        let ClassName { class_name } = read_json(&file, component)?;
        match class_name.as_str() {
            c if c.starts_with("HunyuanVideo15") || c == "AutoencoderKLHunyuanVideo15" => Ok(Family::HunyuanVideo15),
            c if c.starts_with("Wan") || c == "AutoencoderKLWan" || c.is_empty() => Ok(Family::Wan),
            other => Err(ModelSpecError::Invalid {
                component,
                path: file,
                msg: format!(
                    "unknown model class `{other}`: Tessera runs Wan (WanPipeline, AutoencoderKLWan) and HunyuanVideo 1.5 (HunyuanVideo15Pipeline, AutoencoderKLHunyuanVideo15)"
                ),
            }),
        }
    }

    /// The family of the VAE of `model` (a pipeline root holding `vae/`, or the VAE folder itself).
    pub fn of_vae(model: &Path) -> Result<Self, ModelSpecError> {
        let vae = model.join("vae");
        if !vae.join("config.json").is_file() && !model.join("config.json").is_file() {
            // No config to tell: the Wan loader names what is missing (`no vae/ folder …`).
            return Ok(Family::Wan);
        }
        Self::detect(if vae.join("config.json").is_file() { &vae } else { model })
    }
}

/// The published model a folder has the layout of (sizes may be smaller: tests and the demo use
/// tiny models with the real layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Variant {
    /// Wan2.1 text-to-video (one transformer, Wan2.1 VAE).
    Wan21T2v,
    /// Wan2.1 image-to-video (image latents concatenated as channels).
    Wan21I2v,
    /// Wan2.2 TI2V-5B: text- and image-to-video, per-token timesteps, Wan2.2 VAE.
    Wan22Ti2v5b,
    /// Wan2.2 T2V-A14B: two experts switched at `boundary_ratio`.
    Wan22T2vA14b,
    /// Wan2.2 I2V-A14B: two experts, image latents concatenated as channels.
    Wan22I2vA14b,
    /// HunyuanVideo 1.5 text-to-video (480p or 720p: the same architecture).
    Hv15T2v,
    /// HunyuanVideo 1.5 image-to-video (SigLIP image context, image latents at frame 0; its
    /// step-distilled transformers are meanflow ones).
    Hv15I2v,
}

impl Variant {
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Wan21T2v => "Wan2.1 T2V",
            Variant::Wan21I2v => "Wan2.1 I2V",
            Variant::Wan22Ti2v5b => "Wan2.2 TI2V-5B",
            Variant::Wan22T2vA14b => "Wan2.2 T2V-A14B",
            Variant::Wan22I2vA14b => "Wan2.2 I2V-A14B",
            Variant::Hv15T2v => "HunyuanVideo 1.5 T2V",
            Variant::Hv15I2v => "HunyuanVideo 1.5 I2V",
        }
    }
}

/// How the model is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// A diffusers pipeline folder (`model_index.json`, one folder per component).
    DiffusersFolder,
    /// Some component is a single file (ComfyUI / Wan-native / one diffusers file), with or
    /// without a folder around it.
    Files,
}

/// One weight component: the folder or file it was given as, its safetensors files and their key
/// dialect.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    pub path: PathBuf,
    /// Empty for a folder with its config only (not downloaded yet).
    pub files: Vec<PathBuf>,
    pub keys: KeyDialect,
}

impl Component {
    /// A diffusers component folder.
    fn folder(dir: PathBuf) -> Result<Self, ModelSpecError> {
        let files = match Checkpoint::open(&dir) {
            Ok(c) => c.files,
            Err(WeightsError::NoWeights(_)) | Err(WeightsError::Io { .. }) => Vec::new(),
            Err(e) => return Err(ModelSpecError::Read { path: dir, msg: e.to_string() }),
        };
        Ok(Self { path: dir, files, keys: KeyDialect::Diffusers })
    }
}

/// Where each component lives.
#[derive(Clone, Debug, PartialEq)]
pub struct Components {
    pub transformer: Component,
    /// The low-noise expert of A14B.
    pub transformer_2: Option<Component>,
    pub vae: Component,
    /// The `scheduler/` folder; `None` for file layouts (the published config applies).
    pub scheduler: Option<PathBuf>,
    /// UMT5 encoder (a `text_encoder/` folder or a single file) and its tokenizer (`tokenizer/` or
    /// `tokenizer.json`): both are needed to encode prompt text.
    pub text_encoder: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

/// Why a path is not a model Tessera can use; every message says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelSpecError {
    #[error("no model given: pass a diffusers Wan pipeline folder")]
    Empty,
    #[error("model folder not found: {}", .0.display())]
    Missing(PathBuf),
    #[error("not a diffusers Wan pipeline folder (expected model_index.json, transformer/, vae/ and scheduler/): {detail}: {}", .path.display())]
    NotPipeline { detail: String, path: PathBuf },
    /// A folder whose `model_index.json` names a pipeline of another family that lacks one of its
    /// parts: the message names the family, what such a folder holds and what is missing.
    #[error("incomplete {family} pipeline folder (it needs {expected}): {detail}: {}", .path.display())]
    Incomplete { family: &'static str, expected: &'static str, detail: String, path: PathBuf },
    #[error("cannot read {}: {msg}", .path.display())]
    Read { path: PathBuf, msg: String },
    #[error("invalid {component} config in {}: {msg}", .path.display())]
    Invalid { component: &'static str, path: PathBuf, msg: String },
    #[error("{} is not {want}: it holds {got}", .path.display())]
    WrongFile { path: PathBuf, want: &'static str, got: &'static str },
    #[error("{}: {msg}", .path.display())]
    Unsupported { path: PathBuf, msg: String },
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("«lora» {lora}: {msg}")]
    LoraTarget { lora: String, msg: String },
}

/// Everything Tessera knows about a model before loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The path the model was given as.
    pub root: PathBuf,
    pub family: Family,
    pub variant: Variant,
    pub layout: Layout,
    pub components: Components,
    pub index: ModelIndex,
    pub transformer: DitConfig,
    /// The low-noise expert of A14B.
    pub transformer_2: Option<DitConfig>,
    pub vae: VaeConfig,
    /// `None` when the folder has no `text_encoder/` (prompt embeddings come from files).
    pub text_encoder: Option<Umt5Config>,
    /// Stored weights of the denoise and decode components (transformers + VAE); `None` when the
    /// folder holds configs only.
    pub weights: Option<WeightsInfo>,
    /// The files, config and LoRAs the model was opened with (the workers open it the same way).
    pub files: ModelFiles,
    /// `scheduler_config.json`: the folder's, else the published one of the variant.
    pub scheduler_config: serde_json::Value,
    /// What was taken from published configs because the files cannot tell, one line each (shown
    /// to the user).
    pub assumed: Vec<String>,
    /// HunyuanVideo 1.5: the configs its model code loads with (`transformer`/`vae` above then hold
    /// only the family-generic facts, see [`hv15`]); `None` for Wan.
    pub hv15: Option<Hv15Configs>,
    /// `demo.json` of a model trained for a narrow vocabulary (the built-in demo): its default
    /// request and the words its prompts may use ([`demo`]).
    pub demo: Option<DemoInfo>,
}

/// Configs a folder (the `--model` diffusers folder, or `--config`) provides.
#[derive(Default)]
struct Configs {
    index: Option<ModelIndex>,
    transformer: Option<DitConfig>,
    transformer_2: Option<DitConfig>,
    vae: Option<VaeConfig>,
    scheduler: Option<serde_json::Value>,
}

impl Configs {
    /// A `config.json` (its `_class_name` says of what), a component folder holding one, or a
    /// folder of component folders (a pipeline, with or without `model_index.json`).
    fn read(path: &Path) -> Result<Self, ModelSpecError> {
        if !path.exists() {
            return Err(ModelSpecError::Missing(path.to_path_buf()));
        }
        let single = if path.is_file() {
            Some(path.to_path_buf())
        } else {
            Some(path.join("config.json")).filter(|p| p.is_file())
        };
        if let Some(file) = single {
            let value: serde_json::Value = read_json(&file, "config")?;
            let mut out = Self::default();
            match value.get("_class_name").and_then(|c| c.as_str()) {
                Some("AutoencoderKLWan") => out.vae = Some(read_json(&file, "vae")?),
                _ => out.transformer = Some(read_json(&file, "transformer")?),
            }
            return Ok(out);
        }
        let sub = |name: &str, file: &str| Some(path.join(name).join(file)).filter(|p| p.is_file());
        Ok(Self {
            index: Some(path.join("model_index.json"))
                .filter(|p| p.is_file())
                .map(|p| read_json(&p, "model_index.json"))
                .transpose()?,
            transformer: sub("transformer", "config.json").map(|p| read_json(&p, "transformer")).transpose()?,
            transformer_2: sub("transformer_2", "config.json").map(|p| read_json(&p, "transformer_2")).transpose()?,
            vae: sub("vae", "config.json").map(|p| read_json(&p, "vae")).transpose()?,
            scheduler: sub("scheduler", "scheduler_config.json").map(|p| read_json(&p, "scheduler")).transpose()?,
        })
    }

    /// `self`'s configs where it has them, else `other`'s.
    fn or(self, other: Self) -> Self {
        Self {
            index: self.index.or(other.index),
            transformer: self.transformer.or(other.transformer),
            transformer_2: self.transformer_2.or(other.transformer_2),
            vae: self.vae.or(other.vae),
            scheduler: self.scheduler.or(other.scheduler),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, component: &'static str) -> Result<T, ModelSpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelSpecError::Read {
        path: path.to_path_buf(),
        msg: format!("{e}; the model must be a diffusers Wan pipeline folder"),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelSpecError::Invalid {
        component,
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl ModelSpec {
    /// Inspects the model at `path` (configs and safetensors headers only).
    pub fn from_path(path: &Path) -> Result<Self, ModelSpecError> {
        Self::open(path, &ModelFiles::default())
    }

    /// Inspects a model given as `path` (a diffusers pipeline folder, a folder of single files, a
    /// transformer file, or empty) with `files` replacing or adding components, configs and LoRAs
    /// (see the module docs). Reads configs and safetensors headers only, LoRAs' included.
    pub fn open(path: &Path, files: &ModelFiles) -> Result<Self, ModelSpecError> {
        let given = !path.as_os_str().is_empty();
        if !given && files.transformer.is_none() {
            return Err(ModelSpecError::Empty);
        }
        if given && !path.exists() {
            return Err(ModelSpecError::Missing(path.to_path_buf()));
        }
        let pipeline = given && path.join("model_index.json").is_file();
        // The folder's own components (diffusers folders) or its files (a folder of single files).
        let (mut transformer, mut transformer_2, mut vae) = (None, None, None);
        let mut folder_configs = Configs::default();
        let mut text = (None, None);
        if pipeline {
            if Family::detect(path)? == Family::HunyuanVideo15 {
                return hv15::open(path, files);
            }
            folder_configs = Configs::read(path)?;
            let index = folder_configs.index.clone().unwrap_or_default();
            transformer = Some(Component::folder(path.join("transformer"))?);
            transformer_2 =
                index.has_transformer_2().then(|| Component::folder(path.join("transformer_2"))).transpose()?;
            vae = Some(Component::folder(path.join("vae"))?);
            text = (
                Some(path.join("text_encoder")).filter(|d| d.join("config.json").is_file()),
                Some(path.join("tokenizer")).filter(|d| d.is_dir()),
            );
        } else if given && path.is_file() {
            transformer = Some(single_file::transformer_file(path)?);
        } else if given {
            let found = single_file::folder_of_files(path)?;
            let (ts, v) = (found.transformers, found.vae);
            text = (found.text_encoder, found.tokenizer);
            if ts.is_empty() && files.transformer.is_none() {
                return Err(ModelSpecError::NotPipeline {
                    detail: "no model_index.json and no Wan transformer .safetensors file".into(),
                    path: path.to_path_buf(),
                });
            }
            let mut ts = ts.into_iter();
            transformer = ts.next().map(|t| single_file::transformer_file(&t)).transpose()?;
            transformer_2 = ts.next().map(|t| single_file::transformer_file(&t)).transpose()?;
            vae = v.map(|v| single_file::vae_file(&v)).transpose()?;
        }
        if let Some(f) = &files.transformer {
            transformer = Some(single_file::transformer_file(f)?);
        }
        if let Some(f) = &files.transformer_2 {
            transformer_2 = Some(single_file::transformer_file(f)?);
        }
        if let Some(f) = &files.vae {
            vae = Some(single_file::vae_file(f)?);
        }
        if let Some(f) = &files.text_encoder {
            text.0 = Some(single_file::text_encoder_file(f)?);
        }
        if let Some(t) = &files.tokenizer {
            if !t.exists() {
                return Err(ModelSpecError::Missing(t.clone()));
            }
            text.1 = Some(t.clone());
        }
        let root = if given { path.to_path_buf() } else { files.transformer.clone().unwrap_or_default() };
        let Some(transformer) = transformer else {
            return Err(ModelSpecError::NotPipeline {
                detail: "no transformer: pass «transformer» FILE".into(),
                path: root,
            });
        };
        let Some(vae) = vae else {
            return Err(ModelSpecError::NotPipeline { detail: "no VAE: pass «vae» FILE".into(), path: root });
        };
        // Configs: --config first, then the folder's, then the shapes.
        let configs = match &files.config {
            Some(c) => Configs::read(c)?.or(folder_configs),
            None => folder_configs,
        };
        let is_file = |c: &Component| c.path.is_file();
        let layout = if [Some(&transformer), transformer_2.as_ref(), Some(&vae)].into_iter().flatten().any(is_file) {
            Layout::Files
        } else {
            Layout::DiffusersFolder
        };
        let dit_config = |c: &Component, given: Option<DitConfig>| -> Result<DitConfig, ModelSpecError> {
            if !is_file(c) {
                return given.ok_or_else(|| ModelSpecError::NotPipeline {
                    detail: "no transformer/config.json".into(),
                    path: c.path.clone(),
                });
            }
            let table = single_file::transformer_table(c)?;
            let cfg = match given {
                Some(cfg) => cfg,
                None => single_file::infer_transformer(&single_file::shapes(&table), &c.path)?,
            };
            single_file::check_transformer(&cfg, &table, &c.path)?;
            Ok(cfg)
        };
        let transformer_cfg = dit_config(&transformer, configs.transformer.clone())?;
        let transformer_2_cfg = match &transformer_2 {
            Some(c) => Some(dit_config(c, configs.transformer_2.clone().or_else(|| configs.transformer.clone()))?),
            None => None,
        };
        let vae_cfg = if is_file(&vae) {
            let probe = single_file::vae_table(&vae, VaeConfig::wan21().num_res_blocks)?;
            let cfg = match configs.vae.clone() {
                Some(cfg) => cfg,
                None => single_file::infer_vae(&probe, &vae.path)?,
            };
            single_file::check_vae(&cfg, &single_file::vae_table(&vae, cfg.num_res_blocks)?, &vae.path)?;
            cfg
        } else {
            configs.vae.clone().ok_or_else(|| ModelSpecError::NotPipeline {
                detail: "no vae/config.json".into(),
                path: vae.path.clone(),
            })?
        };
        let mut assumed = Vec::new();
        let text_encoder = match &text.0 {
            Some(enc) => {
                let model = TextModel { encoder: enc.clone(), tokenizer: text.1.clone().unwrap_or_default() };
                if model.is_single_file() {
                    assumed.push(
                        "UMT5 relative_attention_max_distance 128 and layer-norm epsilon 1e-6 (google/umt5-xxl; no tensor holds them)"
                            .into(),
                    );
                }
                Some(model.config()?)
            }
            None => None,
        };
        let (index, scheduler_config) = match configs.index.clone() {
            Some(index) => {
                let variant = detect_variant(&index, &transformer_cfg, transformer_2.is_some(), &vae_cfg);
                let sched = match configs.scheduler.clone() {
                    Some(s) => s,
                    None => {
                        let (_, s, a) = single_file::published(variant);
                        assumed.extend(a.into_iter().take(1));
                        s
                    }
                };
                (index, sched)
            }
            None => {
                let variant = variant_from_shapes(&transformer_cfg, transformer_2.is_some(), &vae_cfg);
                let (index, sched, a) = single_file::published(variant);
                assumed.extend(a);
                (index, configs.scheduler.clone().unwrap_or(sched))
            }
        };
        let variant = detect_variant(&index, &transformer_cfg, transformer_2.is_some(), &vae_cfg);
        let comps: Vec<&Component> =
            [Some(&transformer), transformer_2.as_ref(), Some(&vae)].into_iter().flatten().collect();
        let weights = WeightsInfo::read(&comps).map_err(|msg| ModelSpecError::Read { path: root.clone(), msg })?;
        let spec = Self {
            root,
            family: Family::Wan,
            variant,
            layout,
            components: Components {
                transformer,
                transformer_2,
                vae,
                scheduler: pipeline.then(|| path.join("scheduler")),
                text_encoder: text.0,
                tokenizer: text.1,
            },
            index,
            transformer: transformer_cfg,
            transformer_2: transformer_2_cfg,
            vae: vae_cfg,
            text_encoder,
            weights,
            files: files.clone(),
            scheduler_config,
            assumed,
            hv15: None,
            demo: if pipeline { DemoInfo::read(path)? } else { None },
        };
        spec.validate()?;
        spec.check_loras()?;
        Ok(spec)
    }

    /// Each LoRA checked against the expert(s) it goes to (headers only).
    fn check_loras(&self) -> Result<(), ModelSpecError> {
        for lora in &self.files.loras {
            if lora.target == LoraTarget::Low && self.components.transformer_2.is_none() {
                return Err(ModelSpecError::LoraTarget {
                    lora: lora.to_string(),
                    msg: "@low targets transformer_2, the low-noise expert of A14B, and this model has one transformer: drop the @low".into(),
                });
            }
            if !lora.path.is_file() {
                return Err(ModelSpecError::LoraTarget { lora: lora.to_string(), msg: "file not found".into() });
            }
        }
        for expert in 0..self.experts() {
            let (component, cfg) = self.expert(expert);
            let table = single_file::transformer_table(component)?;
            for lora in self.files.loras.iter().filter(|l| l.target.applies_to(expert)) {
                LoraPlan::check(&lora.path, &table, cfg.num_layers)?;
            }
        }
        Ok(())
    }

    /// Number of transformers (2 for A14B).
    pub fn experts(&self) -> usize {
        1 + usize::from(self.components.transformer_2.is_some())
    }

    fn expert(&self, index: usize) -> (&Component, &DitConfig) {
        match (index, &self.components.transformer_2, &self.transformer_2) {
            (1, Some(c), Some(cfg)) => (c, cfg),
            _ => (&self.components.transformer, &self.transformer),
        }
    }

    /// The weights of transformer `index` (0 = `transformer`, 1 = `transformer_2`) as the loaders
    /// read them: renamed from the file's dialect, fp8 dequantised, with the LoRAs for this expert
    /// read and merged at load.
    pub fn transformer_weights(&self, index: usize) -> Result<ComponentWeights, ModelSpecError> {
        let (component, cfg) = self.expert(index);
        let weights =
            ComponentWeights::renamed(component.files.clone(), checkpoint_keys::transformer_rename(&component.keys));
        let loras: Vec<&LoraSpec> = self.files.loras.iter().filter(|l| l.target.applies_to(index)).collect();
        if loras.is_empty() {
            return Ok(weights);
        }
        let table =
            weights.table().map_err(|e| ModelSpecError::Read { path: component.path.clone(), msg: e.to_string() })?;
        let mut deltas = Deltas::default();
        for lora in loras {
            let plan = LoraPlan::check(&lora.path, &table, cfg.num_layers)?;
            plan.add_to(lora.strength, &mut deltas)?;
            tracing::info!(
                "LoRA {} at {} merges into {} tensors of expert {index}",
                lora.path.display(),
                lora.strength,
                plan.tensors()
            );
        }
        Ok(weights.with_deltas(deltas))
    }

    /// The VAE's weights as the loaders read them.
    pub fn vae_weights(&self) -> ComponentWeights {
        let c = &self.components.vae;
        ComponentWeights::renamed(c.files.clone(), checkpoint_keys::vae_rename(&c.keys, self.vae.num_res_blocks))
    }

    fn validate(&self) -> Result<(), ModelSpecError> {
        let invalid = |component, msg: String| ModelSpecError::Invalid { component, path: self.root.clone(), msg };
        for (name, t) in [("transformer", Some(&self.transformer)), ("transformer_2", self.transformer_2.as_ref())] {
            if let Some(t) = t {
                t.validate().map_err(|e| invalid(name, e.to_string()))?;
            }
        }
        self.vae.validate().map_err(|e| invalid("vae", e))?;
        if self.transformer.out_channels() != self.vae.z_dim {
            return Err(invalid(
                "transformer",
                format!(
                    "out_channels {} differs from the VAE's z_dim {}: transformer and vae/ are from different models",
                    self.transformer.out_channels(),
                    self.vae.z_dim
                ),
            ));
        }
        if let Some(t2) = &self.transformer_2 {
            if t2.num_attention_heads != self.transformer.num_attention_heads
                || t2.in_channels != self.transformer.in_channels
            {
                return Err(invalid(
                    "transformer_2",
                    "the two experts differ in heads or input channels: transformer/ and transformer_2/ are from different models".into(),
                ));
            }
        }
        // A runnable model needs its scheduler; a configs-only folder (for planning) does not.
        if self.weights.is_some()
            && self.components.scheduler.as_ref().is_some_and(|d| !d.join("scheduler_config.json").is_file())
        {
            return Err(ModelSpecError::NotPipeline {
                detail: "no scheduler/scheduler_config.json".into(),
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// Height and width must be multiples of this (VAE spatial factor × transformer patch).
    pub fn size_multiple(&self) -> usize {
        self.vae.scale_factor_spatial * self.transformer.patch_size[1]
    }

    /// A14B / Wan2.1 I2V: the image is VAE-encoded with `frames − 1` zero frames and concatenated
    /// as channels (TI2V encodes the single image).
    pub fn channel_concat_i2v(&self) -> bool {
        self.family == Family::Wan && self.transformer.in_channels != self.vae.z_dim
    }

    /// Whether an input image must be given (the transformer takes image channels).
    pub fn requires_image(&self) -> bool {
        self.channel_concat_i2v() || self.variant == Variant::Hv15I2v
    }

    /// Whether an input image can be used (I2V models, and TI2V's optional first frame).
    pub fn accepts_image(&self) -> bool {
        self.requires_image() || self.index.expand_timesteps
    }

    /// A14B: a second (low-noise) expert, and a second guidance scale.
    pub fn two_experts(&self) -> bool {
        self.transformer_2.is_some()
    }

    /// Attention heads (Ulysses splits them).
    pub fn num_heads(&self) -> usize {
        self.transformer.num_attention_heads
    }

    /// Both the UMT5 encoder and its tokenizer are there, so prompt text can be encoded.
    pub fn can_encode_text(&self) -> bool {
        self.text_model().is_some()
    }

    /// The UMT5 encoder and tokenizer, when the model has both.
    pub fn text_model(&self) -> Option<TextModel> {
        match (&self.components.text_encoder, &self.components.tokenizer) {
            (Some(encoder), Some(tokenizer)) => {
                Some(TextModel { encoder: encoder.clone(), tokenizer: tokenizer.clone() })
            }
            _ => None,
        }
    }

    /// The pipelines' default frame rate: 24 fps for TI2V-5B, 16 for the Wan2.1-VAE models.
    pub fn default_fps(&self) -> f64 {
        // HunyuanVideo 1.5 exports at 24 fps (diffusers' pipeline examples).
        if self.index.expand_timesteps || self.family == Family::HunyuanVideo15 {
            24.0
        } else {
            16.0
        }
    }

    /// The expert switch in scheduler timesteps (`boundary_ratio × num_train_timesteps`).
    pub fn boundary_timestep(&self) -> Option<f64> {
        // Wan's schedulers are trained on 1000 timesteps (scheduler_config `num_train_timesteps`).
        self.index.boundary_ratio.map(|r| r * 1000.0)
    }

    /// Latent grid `(frames, rows, cols)` of a request.
    pub fn latent_grid(&self, height: usize, width: usize, frames: usize) -> (usize, usize, usize) {
        let s = self.vae.scale_factor_spatial;
        ((frames.max(1) - 1) / self.vae.scale_factor_temporal + 1, height / s, width / s)
    }

    /// One line for people: "Wan2.2 TI2V-5B layout (WanPipeline), 30 blocks × 24 heads".
    pub fn describe(&self) -> String {
        format!(
            "{} layout ({}), {} blocks × {} heads",
            self.variant.describe(),
            self.index.class_name,
            self.transformer.num_layers,
            self.transformer.num_attention_heads
        )
    }
}

/// A VAE on its own (`tessera vae decode|encode --model`): a pipeline folder, its `vae/` folder, or
/// a VAE file (config: `config` if given, else the folder's, else the published one for its
/// latent channels).
pub fn vae_component(path: &Path, config: Option<&Path>) -> Result<(VaeConfig, ComponentWeights), ModelSpecError> {
    if !path.exists() {
        return Err(ModelSpecError::Missing(path.to_path_buf()));
    }
    let given = config.map(Configs::read).transpose()?.and_then(|c| c.vae);
    if path.is_file() {
        let c = single_file::vae_file(path)?;
        let probe = single_file::vae_table(&c, VaeConfig::wan21().num_res_blocks)?;
        let cfg = match given {
            Some(cfg) => cfg,
            None => single_file::infer_vae(&probe, path)?,
        };
        single_file::check_vae(&cfg, &single_file::vae_table(&c, cfg.num_res_blocks)?, path)?;
        return Ok((
            cfg.clone(),
            ComponentWeights::renamed(c.files, checkpoint_keys::vae_rename(&c.keys, cfg.num_res_blocks)),
        ));
    }
    let dir = crate::weights::component_dir(path, "vae")
        .map_err(|e| ModelSpecError::Read { path: path.to_path_buf(), msg: e.to_string() })?;
    let cfg = match given {
        Some(cfg) => cfg,
        None => read_json(&dir.join("config.json"), "vae")?,
    };
    let files =
        Checkpoint::open(&dir).map_err(|e| ModelSpecError::Read { path: dir.clone(), msg: e.to_string() })?.files;
    Ok((cfg, ComponentWeights::diffusers(files)))
}

/// The variant of a model without `model_index.json`: two experts are A14B, a transformer that
/// takes the Wan2.2 VAE's 48 channels is TI2V-5B, anything else Wan2.1.
fn variant_from_shapes(dit: &DitConfig, two_experts: bool, vae: &VaeConfig) -> Variant {
    let channel_concat = dit.in_channels != vae.z_dim;
    match (two_experts, channel_concat, vae.z_dim == 48 || vae.is_residual) {
        (true, true, _) => Variant::Wan22I2vA14b,
        (true, false, _) => Variant::Wan22T2vA14b,
        (false, _, true) => Variant::Wan22Ti2v5b,
        (false, true, false) => Variant::Wan21I2v,
        (false, false, false) => Variant::Wan21T2v,
    }
}

fn detect_variant(index: &ModelIndex, dit: &DitConfig, two_experts: bool, vae: &VaeConfig) -> Variant {
    let channel_concat = dit.in_channels != vae.z_dim;
    match (two_experts, channel_concat, index.expand_timesteps) {
        (true, true, _) => Variant::Wan22I2vA14b,
        (true, false, _) => Variant::Wan22T2vA14b,
        (false, _, true) => Variant::Wan22Ti2v5b,
        (false, true, false) => Variant::Wan21I2v,
        (false, false, false) => Variant::Wan21T2v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(path)
    }

    #[test]
    fn real_configs_are_recognised_without_weights() {
        let ti2v = ModelSpec::from_path(&fixture("configs/wan2.2-ti2v-5b")).unwrap();
        assert_eq!(ti2v.variant, Variant::Wan22Ti2v5b);
        assert!(ti2v.index.expand_timesteps && !ti2v.two_experts() && !ti2v.channel_concat_i2v());
        assert_eq!((ti2v.size_multiple(), ti2v.default_fps()), (32, 24.0));
        assert_eq!(ti2v.latent_grid(704, 1280, 121), (31, 44, 80));
        assert_eq!(ti2v.weights, None, "configs only");
        let i2v = ModelSpec::from_path(&fixture("configs/wan2.2-i2v-a14b")).unwrap();
        assert_eq!(i2v.variant, Variant::Wan22I2vA14b);
        assert!(i2v.requires_image() && i2v.two_experts());
        assert_eq!(i2v.text_encoder.as_ref().map(|t| t.num_layers), Some(24));
        let t2v = ModelSpec::from_path(&fixture("configs/wan2.2-t2v-a14b")).unwrap();
        assert_eq!(
            (t2v.variant, t2v.default_fps(), t2v.boundary_timestep()),
            (Variant::Wan22T2vA14b, 16.0, Some(875.0))
        );
    }

    #[test]
    fn golden_pipeline_has_weights_and_no_text_encoder() {
        let spec = ModelSpec::from_path(&fixture("golden/pipeline")).unwrap();
        assert!(
            spec.describe().starts_with("Wan2.2 TI2V-5B layout (WanPipeline), 2 blocks × 4 heads"),
            "{}",
            spec.describe()
        );
        let w = spec.weights.as_ref().unwrap();
        // The golden weights are stored bf16 (scripts/gen_golden.py): transformer + VAE ≈ 3.1 MB.
        assert_eq!(w.dtype, "BF16");
        assert!(w.bytes > 3_000_000, "{}", w.bytes);
        assert!(!spec.can_encode_text());
        let prompt = ModelSpec::from_path(&fixture("golden/prompt"));
        assert!(prompt.is_err(), "the prompt case has no transformer");
    }

    #[test]
    fn hv15_folders_are_recognised() {
        let vae = fixture("hv15/vae/vae");
        assert_eq!(Family::detect(&vae), Ok(Family::HunyuanVideo15));
        assert_eq!(Family::of_vae(&fixture("hv15/vae")), Ok(Family::HunyuanVideo15));
        assert_eq!(Family::of_vae(&fixture("golden/vae22")), Ok(Family::Wan));
        assert_eq!(Family::detect(&fixture("golden/pipeline")), Ok(Family::Wan));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), r#"{"_class_name": "HunyuanVideo15Pipeline"}"#).unwrap();
        let err = ModelSpec::from_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no transformer/config.json"), "{err}");
        std::fs::write(dir.path().join("model_index.json"), r#"{"_class_name": "HunyuanVideo15ImageToVideoPipeline"}"#)
            .unwrap();
        let err = ModelSpec::from_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no transformer/config.json"), "{err}");
        let i2v = ModelSpec::from_path(&fixture("hv15/pipeline_i2v")).unwrap();
        assert_eq!((i2v.family, i2v.variant), (Family::HunyuanVideo15, Variant::Hv15I2v));
        assert!(i2v.requires_image() && i2v.accepts_image());
        let t2v = ModelSpec::from_path(&fixture("hv15/pipeline")).unwrap();
        assert_eq!((t2v.family, t2v.variant), (Family::HunyuanVideo15, Variant::Hv15T2v));
        let hv = t2v.hv15.as_ref().unwrap();
        assert_eq!((hv.transformer.num_layers, hv.vae.latent_channels, hv.guidance_scale), (2, 4, Some(6.0)));
        // The generic facts the request checks and the planner read.
        assert_eq!((t2v.num_heads(), t2v.size_multiple(), t2v.vae.z_dim, t2v.default_fps()), (4, 16, 4, 24.0));
        assert!(!t2v.accepts_image() && !t2v.requires_image() && !t2v.can_encode_text());
        assert!(t2v.weights.is_some());
        std::fs::write(dir.path().join("model_index.json"), r#"{"_class_name": "FluxPipeline"}"#).unwrap();
        let err = Family::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown model class `FluxPipeline`"), "{err}");
    }

    #[test]
    fn bad_paths_say_what_to_do() {
        assert_eq!(ModelSpec::from_path(Path::new("")), Err(ModelSpecError::Empty));
        let missing = ModelSpec::from_path(Path::new("/nonexistent/wan")).unwrap_err().to_string();
        assert_eq!(missing, "model folder not found: /nonexistent/wan");
        let dir = tempfile::tempdir().unwrap();
        let err = ModelSpec::from_path(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("not a diffusers Wan pipeline folder"), "{err}");
    }
}
