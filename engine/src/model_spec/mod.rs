//! The one reader of a model on disk: [`ModelSpec::from_path`] inspects a model folder once and says
//! what it is (family, variant, layout), which components it has and where, their configs, weight
//! sizes and dtype, and what a request must respect (size multiple, I2V input, experts, default fps).
//! The CLI, the studio, the planner and the workers all take their facts from it.
//!
//! - [`index`]: `model_index.json`, the fields the pipelines read.
//! - [`weights_info`]: stored bytes and dtype of a component, from safetensors headers only.
//!
//! Only configs and safetensors headers are read, so inspecting a 60 GB checkpoint is instant, and
//! a folder with configs but no weights (a model not downloaded yet) can still be planned for.
//! New layouts (single-file checkpoints) and families (HunyuanVideo 1.5) add a [`Layout`] /
//! [`Family`] variant and a detection branch here; nothing downstream reads folders itself.

pub mod index;
pub mod weights_info;

use std::path::{Path, PathBuf};

pub use index::ModelIndex;
pub use weights_info::WeightsInfo;

use crate::models::umt5::config::Config as Umt5Config;
use crate::models::wan::transformer::config::Config as DitConfig;
use crate::models::wan::vae::config::Config as VaeConfig;

/// Model families Tessera runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// Wan2.1 / Wan2.2 (`WanPipeline`, `WanImageToVideoPipeline`).
    Wan,
    /// HunyuanVideo 1.5 (`HunyuanVideo15Pipeline`, `HunyuanVideo15ImageToVideoPipeline`). So far
    /// only its VAE runs (`tessera vae decode|encode`); [`ModelSpec::from_path`] says so.
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
}

impl Variant {
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Wan21T2v => "Wan2.1 T2V",
            Variant::Wan21I2v => "Wan2.1 I2V",
            Variant::Wan22Ti2v5b => "Wan2.2 TI2V-5B",
            Variant::Wan22T2vA14b => "Wan2.2 T2V-A14B",
            Variant::Wan22I2vA14b => "Wan2.2 I2V-A14B",
        }
    }
}

/// How the model is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// A diffusers pipeline folder (`model_index.json`, one folder per component).
    DiffusersFolder,
}

/// Where each component lives. Configs are read from `<dir>/config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Components {
    pub transformer: PathBuf,
    /// The low-noise expert of A14B.
    pub transformer_2: Option<PathBuf>,
    pub vae: PathBuf,
    pub scheduler: PathBuf,
    /// UMT5 encoder and its tokenizer: both are needed to encode prompt text.
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
    #[error("cannot read {}: {msg}", .path.display())]
    Read { path: PathBuf, msg: String },
    #[error("invalid {component} config in {}: {msg}", .path.display())]
    Invalid { component: &'static str, path: PathBuf, msg: String },
    #[error("{} is a {} pipeline folder; so far only its VAE runs (tessera vae decode|encode --model …): generation needs its transformer, which is not ported yet", .path.display(), .family.describe())]
    VaeOnly { family: Family, path: PathBuf },
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
        if path.as_os_str().is_empty() {
            return Err(ModelSpecError::Empty);
        }
        if !path.exists() {
            return Err(ModelSpecError::Missing(path.to_path_buf()));
        }
        if !path.join("model_index.json").is_file() {
            return Err(ModelSpecError::NotPipeline { detail: "no model_index.json".into(), path: path.to_path_buf() });
        }
        let index: ModelIndex = read_json(&path.join("model_index.json"), "model_index.json")?;
        let family = Family::detect(path)?;
        if family != Family::Wan {
            return Err(ModelSpecError::VaeOnly { family, path: path.to_path_buf() });
        }
        let components = Components {
            transformer: path.join("transformer"),
            transformer_2: index.has_transformer_2().then(|| path.join("transformer_2")),
            vae: path.join("vae"),
            scheduler: path.join("scheduler"),
            text_encoder: Some(path.join("text_encoder")).filter(|d| d.join("config.json").is_file()),
            tokenizer: Some(path.join("tokenizer")).filter(|d| d.is_dir()),
        };
        let transformer: DitConfig = read_json(&components.transformer.join("config.json"), "transformer")?;
        let transformer_2 = match &components.transformer_2 {
            Some(dir) => Some(read_json::<DitConfig>(&dir.join("config.json"), "transformer_2")?),
            None => None,
        };
        let vae: VaeConfig = read_json(&components.vae.join("config.json"), "vae")?;
        let text_encoder = match &components.text_encoder {
            Some(dir) => Some(read_json::<Umt5Config>(&dir.join("config.json"), "text_encoder")?),
            None => None,
        };
        let variant = detect_variant(&index, &transformer, transformer_2.is_some(), &vae);
        let weights = WeightsInfo::read(
            std::iter::once(components.transformer.as_path())
                .chain(components.transformer_2.as_deref())
                .chain(std::iter::once(components.vae.as_path())),
        )
        .map_err(|msg| ModelSpecError::Read { path: path.to_path_buf(), msg })?;
        let spec = Self {
            root: path.to_path_buf(),
            family,
            variant,
            layout: Layout::DiffusersFolder,
            components,
            index,
            transformer,
            transformer_2,
            vae,
            text_encoder,
            weights,
        };
        spec.validate()?;
        Ok(spec)
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
        if self.weights.is_some() && !self.components.scheduler.join("scheduler_config.json").is_file() {
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
        self.transformer.in_channels != self.vae.z_dim
    }

    /// Whether an input image must be given (the transformer takes image channels).
    pub fn requires_image(&self) -> bool {
        self.channel_concat_i2v()
    }

    /// Whether an input image can be used (I2V models, and TI2V's optional first frame).
    pub fn accepts_image(&self) -> bool {
        self.channel_concat_i2v() || self.index.expand_timesteps
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
        self.components.text_encoder.is_some() && self.components.tokenizer.is_some()
    }

    /// The pipelines' default frame rate: 24 fps for TI2V-5B, 16 for the Wan2.1-VAE models.
    pub fn default_fps(&self) -> f64 {
        if self.index.expand_timesteps {
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
        assert_eq!(w.dtype, "F32");
        assert!(w.bytes > 6_000_000, "{}", w.bytes);
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
        let err = ModelSpec::from_path(dir.path()).unwrap_err();
        assert_eq!(err, ModelSpecError::VaeOnly { family: Family::HunyuanVideo15, path: dir.path().to_path_buf() });
        assert!(err.to_string().contains("only its VAE runs"), "{err}");
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
