//! Components given as single files (ComfyUI, Kijai, the official Wan releases, or one diffusers
//! `diffusion_pytorch_model.safetensors`): what a file holds, in which key dialect, the config its
//! tensor shapes imply, and the published pipeline settings shapes cannot tell.
//!
//! Shapes settle everything of a Wan transformer but its head count: every published Wan model has
//! head dim 128, so `heads = inner_dim / 128`; models that differ (finetunes, the tiny test models)
//! need `--config`. A VAE is the published Wan2.1 (z 16) or Wan2.2 (z 48) one, whose
//! `latents_mean/std` no shape holds; other z dims need `--config` too. Every inferred or given
//! config is checked against the file: the module tree of one block and the stem is built over a
//! recording `VarBuilder` and each tensor it asks for must be in the file with that shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::{Component, ModelIndex, ModelSpecError, Variant};
use crate::models::wan::checkpoint_keys::{self, KeyDialect, VaeKeys};
use crate::models::wan::transformer::{Config as DitConfig, WanTransformer3DModel};
use crate::models::wan::vae::{AutoencoderKLWan, Config as VaeConfig, VaeParts};
use crate::pipeline_folder::{Arch, PipelineSpec};
use crate::weights::{ComponentWeights, RecordingBackend, TensorTable};

/// The head dim of every published Wan transformer (Wan2.1 1.3B/14B, Wan2.2 5B/A14B).
pub const PUBLISHED_HEAD_DIM: usize = 128;

/// What a safetensors file holds, from its keys.
#[derive(Debug, Clone, PartialEq)]
pub enum FileKind {
    Transformer(KeyDialect),
    Vae(VaeKeys),
    /// A UMT5 text encoder (`umt5_xxl_*.safetensors`).
    TextEncoder,
    Other,
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> ModelSpecError {
    ModelSpecError::Read { path: path.to_path_buf(), msg: e.to_string() }
}

/// Classifies the safetensors file at `path` by its keys (header only).
pub fn classify(path: &Path) -> Result<FileKind, ModelSpecError> {
    let (keys, _) = crate::weights::table::header_keys(path).map_err(|e| read_error(path, e))?;
    let names = keys.keys().map(String::as_str);
    if let Some(d) = checkpoint_keys::detect_transformer(names.clone()) {
        return Ok(FileKind::Transformer(d));
    }
    if let Some(v) = checkpoint_keys::detect_vae(names.clone()) {
        return Ok(FileKind::Vae(v));
    }
    if is_umt5(names) {
        return Ok(FileKind::TextEncoder);
    }
    Ok(FileKind::Other)
}

/// A transformer given as a file.
pub fn transformer_file(path: &Path) -> Result<Component, ModelSpecError> {
    match classify(path)? {
        FileKind::Transformer(keys) => {
            Ok(Component { path: path.to_path_buf(), files: vec![path.to_path_buf()], keys })
        }
        other => Err(ModelSpecError::WrongFile {
            path: path.to_path_buf(),
            want: "a Wan transformer",
            got: describe(&other),
        }),
    }
}

/// A VAE given as a file.
pub fn vae_file(path: &Path) -> Result<Component, ModelSpecError> {
    match classify(path)? {
        FileKind::Vae(VaeKeys::Diffusers) => {
            Ok(Component { path: path.to_path_buf(), files: vec![path.to_path_buf()], keys: KeyDialect::Diffusers })
        }
        FileKind::Vae(VaeKeys::Wan21Native | VaeKeys::Wan22Native) => Ok(Component {
            path: path.to_path_buf(),
            files: vec![path.to_path_buf()],
            keys: KeyDialect::WanNative { prefix: String::new() },
        }),
        other => Err(ModelSpecError::WrongFile { path: path.to_path_buf(), want: "a Wan VAE", got: describe(&other) }),
    }
}

/// A UMT5 text encoder given as a file (or a `text_encoder/` folder).
pub fn text_encoder_file(path: &Path) -> Result<PathBuf, ModelSpecError> {
    if path.is_dir() && crate::weights::component_dir(path, "text_encoder").is_ok() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(ModelSpecError::Missing(path.to_path_buf()));
    }
    match classify(path)? {
        FileKind::TextEncoder => Ok(path.to_path_buf()),
        other => Err(ModelSpecError::WrongFile {
            path: path.to_path_buf(),
            want: "a UMT5 text encoder",
            got: describe(&other),
        }),
    }
}

fn describe(kind: &FileKind) -> &'static str {
    match kind {
        FileKind::Transformer(_) => "a Wan transformer",
        FileKind::Vae(_) => "a Wan VAE",
        FileKind::TextEncoder => "a UMT5 text encoder",
        FileKind::Other => "no Wan transformer, VAE or UMT5 tensors",
    }
}

/// What a folder of single files holds.
#[derive(Debug, Default)]
pub struct FolderFiles {
    /// One transformer, or the two A14B experts (high-noise first).
    pub transformers: Vec<PathBuf>,
    pub vae: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    /// `tokenizer.json` or a `tokenizer/` folder holding one.
    pub tokenizer: Option<PathBuf>,
}

/// ComfyUI's `models/` subfolders that hold what a Wan model needs (one level down).
const COMFY_SUBFOLDERS: [&str; 5] = ["diffusion_models", "unet", "vae", "text_encoders", "clip"];

/// A folder of single files (a ComfyUI `models/` pick, or ComfyUI's `models/` folder itself with
/// its `diffusion_models/`, `vae/`, `text_encoders/` subfolders): its transformer(s), VAE, UMT5 text
/// encoder and tokenizer. Two transformers are the A14B experts, told apart by `high_noise` /
/// `low_noise` in their names.
pub fn folder_of_files(dir: &Path) -> Result<FolderFiles, ModelSpecError> {
    let mut out = FolderFiles::default();
    let list = |d: &Path| -> Result<Vec<PathBuf>, ModelSpecError> {
        let entries = std::fs::read_dir(d).map_err(|e| read_error(d, e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        Ok(files)
    };
    let mut files = list(dir)?;
    for sub in COMFY_SUBFOLDERS.iter().map(|s| dir.join(s)).filter(|d| d.is_dir()) {
        files.extend(list(&sub)?);
    }
    for f in files {
        match classify(&f)? {
            FileKind::Transformer(_) => out.transformers.push(f),
            FileKind::Vae(_) if out.vae.is_none() => out.vae = Some(f),
            FileKind::TextEncoder if out.text_encoder.is_none() => out.text_encoder = Some(f),
            kind => tracing::info!("{}: {} — not used", f.display(), describe(&kind)),
        }
    }
    out.tokenizer = [dir.to_path_buf(), dir.join("text_encoders")]
        .into_iter()
        .flat_map(|d| [d.join("tokenizer.json"), d.join("tokenizer").join("tokenizer.json")])
        .find(|p| p.is_file());
    let transformers = &mut out.transformers;
    if transformers.len() == 2 {
        let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        transformers.sort_by_key(|p| !name(p).contains("high"));
        if !name(&transformers[0]).contains("high") || !name(&transformers[1]).contains("low") {
            return Err(ModelSpecError::NotPipeline {
                detail: "two transformer files, but their names do not say which is the high-noise expert (…high_noise… / …low_noise…): pass them as «transformer» and «transformer-2»".into(),
                path: dir.to_path_buf(),
            });
        }
    }
    if transformers.len() > 2 {
        return Err(ModelSpecError::NotPipeline {
            detail: format!(
                "{} transformer files: keep one (or the two A14B experts) in the folder, or pick with «transformer»",
                transformers.len()
            ),
            path: dir.to_path_buf(),
        });
    }
    Ok(out)
}

/// The tensor table of a transformer component (diffusers names).
pub fn transformer_table(c: &Component) -> Result<TensorTable, ModelSpecError> {
    ComponentWeights::renamed(c.files.clone(), checkpoint_keys::transformer_rename(&c.keys))
        .table()
        .map_err(|e| read_error(&c.path, e))
}

/// The tensor table of a VAE component (diffusers names).
pub fn vae_table(c: &Component, num_res_blocks: usize) -> Result<TensorTable, ModelSpecError> {
    ComponentWeights::renamed(c.files.clone(), checkpoint_keys::vae_rename(&c.keys, num_res_blocks))
        .table()
        .map_err(|e| read_error(&c.path, e))
}

fn dims(table: &Shapes, name: &str) -> Option<Vec<usize>> {
    table.get(name).cloned()
}

/// Tensor shapes by diffusers name.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// The shapes of a table's tensors.
pub fn shapes(table: &TensorTable) -> Shapes {
    table.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect()
}

/// The transformer config tensor shapes (diffusers names) imply (see the module docs for the head
/// count).
pub fn infer_transformer(table: &Shapes, path: &Path) -> Result<DitConfig, ModelSpecError> {
    let missing = |name: &str| ModelSpecError::Invalid {
        component: "transformer",
        path: path.to_path_buf(),
        msg: format!("no {name} tensor: not a whole Wan transformer"),
    };
    let need = |name: &str| dims(table, name).ok_or_else(|| missing(name));
    let patch = need("patch_embedding.weight")?;
    if patch.len() != 5 {
        return Err(missing("5-D patch_embedding.weight"));
    }
    let (inner, in_channels, patch_size) = (patch[0], patch[1], [patch[2], patch[3], patch[4]]);
    let num_layers = table
        .keys()
        .filter_map(|n| n.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
        .ok_or_else(|| missing("blocks.0.*"))?;
    if inner % PUBLISHED_HEAD_DIM != 0 {
        return Err(ModelSpecError::Invalid {
            component: "transformer",
            path: path.to_path_buf(),
            msg: format!(
                "its width {inner} is not a multiple of {PUBLISHED_HEAD_DIM}, the head dim of every published Wan model, so the attention heads cannot be told from the shapes: pass «config» with its config.json"
            ),
        });
    }
    let out = need("proj_out.weight")?[0] / patch_size.iter().product::<usize>().max(1);
    let image_dim = dims(table, "condition_embedder.image_embedder.norm1.weight").map(|d| d[0]);
    Ok(DitConfig {
        patch_size,
        num_attention_heads: inner / PUBLISHED_HEAD_DIM,
        attention_head_dim: PUBLISHED_HEAD_DIM,
        in_channels,
        out_channels: Some(out),
        text_dim: need("condition_embedder.text_embedder.linear_1.weight")?[1],
        freq_dim: need("condition_embedder.time_embedder.linear_1.weight")?[1],
        ffn_dim: need("blocks.0.ffn.net.0.proj.weight")?[0],
        num_layers,
        cross_attn_norm: table.contains_key("blocks.0.norm2.weight"),
        qk_norm: table.get("blocks.0.attn1.norm_q.weight").map(|_| "rms_norm_across_heads".to_string()),
        image_dim,
        added_kv_proj_dim: table.get("blocks.0.attn2.add_k_proj.weight").map(|_| inner),
        pos_embed_seq_len: dims(table, "condition_embedder.image_embedder.pos_embed").and_then(|d| d.get(1).copied()),
        ..DitConfig::default()
    })
}

/// The published VAE config with the file's `z_dim` (Wan2.1: 16, Wan2.2: 48).
pub fn infer_vae(table: &TensorTable, path: &Path) -> Result<VaeConfig, ModelSpecError> {
    let z = table.get("post_quant_conv.weight").map(|t| t.shape[0]).unwrap_or(0);
    match z {
        16 => Ok(VaeConfig::wan21()),
        48 => Ok(VaeConfig::wan22()),
        _ => Err(ModelSpecError::Invalid {
            component: "vae",
            path: path.to_path_buf(),
            msg: format!("latent channels {z} are neither the Wan2.1 VAE's 16 nor the Wan2.2 VAE's 48, so its latent statistics are unknown: pass «config» with its config.json"),
        }),
    }
}

/// Checks `table` against the tensors `build` asks for over a recording `VarBuilder`: every
/// tensor present with the same shape.
fn check_tree(
    table: &TensorTable,
    path: &Path,
    component: &'static str,
    build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<()>,
) -> Result<(), ModelSpecError> {
    let rec = RecordingBackend::new();
    build(rec.var_builder(DType::F32, &Device::Cpu)).map_err(|e| ModelSpecError::Invalid {
        component,
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let requested: BTreeMap<String, Vec<usize>> = rec.requested();
    let mut missing = Vec::new();
    for (name, shape) in &requested {
        match table.get(name) {
            None => missing.push(name.clone()),
            Some(t) if &t.shape != shape => {
                return Err(ModelSpecError::Invalid {
                    component,
                    path: path.to_path_buf(),
                    msg: format!(
                        "{name} is {:?} in the file but the config needs {shape:?}: the config does not describe this file (pass «config» with the right config.json)",
                        t.shape
                    ),
                })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let first: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
        return Err(ModelSpecError::Invalid {
            component,
            path: path.to_path_buf(),
            msg: format!("{} tensors the config needs are not in the file, e.g. {}", missing.len(), first.join(", ")),
        });
    }
    Ok(())
}

/// Checks a transformer file against `cfg`: the stem and block 0 tensor by tensor, and the block count.
pub fn check_transformer(cfg: &DitConfig, table: &TensorTable, path: &Path) -> Result<(), ModelSpecError> {
    let blocks = table
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
        .unwrap_or(0);
    if blocks != cfg.num_layers {
        return Err(ModelSpecError::Invalid {
            component: "transformer",
            path: path.to_path_buf(),
            msg: format!("the file has {blocks} blocks but the config says num_layers {}", cfg.num_layers),
        });
    }
    let one = DitConfig { num_layers: 1, ..cfg.clone() };
    check_tree(table, path, "transformer", |vb| WanTransformer3DModel::new(&one, vb).map(|_| ()))
}

/// Checks a VAE file against `cfg`, every tensor.
pub fn check_vae(cfg: &VaeConfig, table: &TensorTable, path: &Path) -> Result<(), ModelSpecError> {
    check_tree(table, path, "vae", |vb| AutoencoderKLWan::new(cfg, VaeParts::Both, vb).map(|_| ()))
}

/// The published pipeline settings of `variant` (diffusers' Wan-AI `*-Diffusers` folders:
/// `model_index.json` and `scheduler/scheduler_config.json`), and one line per assumed value.
pub fn published(variant: Variant) -> (ModelIndex, serde_json::Value, Vec<String>) {
    let arch = match variant {
        Variant::Wan22Ti2v5b => Some(Arch::Wan22Ti2v5b),
        Variant::Wan22T2vA14b => Some(Arch::Wan22T2vA14b),
        Variant::Wan22I2vA14b => Some(Arch::Wan22I2vA14b),
        Variant::Wan21T2v | Variant::Wan21I2v | Variant::Hv15T2v | Variant::Hv15I2v => None,
    };
    let spec = arch.and_then(|a| PipelineSpec::for_arch(a, Some(1)).ok().flatten());
    let (class, expand, boundary, shift) = match &spec {
        Some(s) => (s.class_name, s.expand_timesteps, s.boundary_ratio, s.flow_shift),
        // Wan-AI/Wan2.1-T2V-14B-Diffusers and -I2V-14B-480P-Diffusers: UniPC, flow_shift 3.0.
        None if variant == Variant::Wan21I2v => ("WanImageToVideoPipeline", false, None, 3.0),
        None => ("WanPipeline", false, None, 3.0),
    };
    let scheduler = match &spec {
        Some(s) => s.scheduler_config(),
        None => {
            let mut s = PipelineSpec::for_arch(Arch::Wan22T2vA14b, Some(1))
                .ok()
                .flatten()
                .map(|s| s.scheduler_config())
                .unwrap_or_default();
            s["flow_shift"] = serde_json::json!(shift);
            s
        }
    };
    let index = ModelIndex {
        class_name: class.to_string(),
        boundary_ratio: boundary,
        expand_timesteps: expand,
        transformer_2: boundary.map(|_| serde_json::json!(["diffusers", "WanTransformer3DModel"])),
    };
    let mut assumed = vec![format!(
        "{} settings from its published diffusers config: UniPC scheduler, flow_shift {shift}",
        variant.describe()
    )];
    if let Some(b) = boundary {
        assumed.push(format!(
            "expert switch boundary_ratio {b} (transformer above t = {}, transformer_2 below)",
            b * 1000.0
        ));
    }
    if expand {
        assumed.push("per-token timesteps (expand_timesteps), as TI2V-5B".into());
    }
    (index, scheduler, assumed)
}

/// Prefixes full checkpoints put before the UMT5 names.
pub const TEXT_PREFIXES: [&str; 2] = ["text_encoders.umt5xxl.transformer.", "umt5xxl.transformer."];

/// Whether a file's keys are a UMT5 encoder's (after an optional checkpoint prefix).
pub fn is_umt5<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| {
        let k = TEXT_PREFIXES.iter().find_map(|p| k.strip_prefix(p)).unwrap_or(k);
        k.starts_with("encoder.block.0.layer.0.SelfAttention.")
    })
}
