//! What a model folder holds, as the Setup panel shows it: pipeline kind, weight size and dtype,
//! the size multiple requests must respect, attention heads (for the plan check), and whether a
//! text encoder is there. Only small files are read (configs and safetensors headers).

use std::io::Read;
use std::path::{Path, PathBuf};

use tessera_engine::models::wan::{transformer, vae};
use tessera_engine::pipeline::wan::ModelIndex;
use tessera_engine::weights::{self, Checkpoint};

/// A model folder the studio can run.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub root: PathBuf,
    /// e.g. "Wan2.2 TI2V-5B layout (WanPipeline)".
    pub kind: String,
    /// Stored weight bytes of transformer(s) and VAE.
    pub weights_bytes: u64,
    /// Stored dtype of the transformer weights, e.g. "F32" or "BF16".
    pub dtype: String,
    /// Height and width must be multiples of this (VAE spatial factor × patch).
    pub size_multiple: usize,
    pub num_heads: usize,
    /// Width of the prompt embeddings the transformer takes.
    pub text_dim: usize,
    /// Latent channels of the VAE.
    pub z_dim: usize,
    /// VAE spatial compression (pixels per latent row/column).
    pub vae_spatial: usize,
    /// A14B: two experts (guidance 2 applies).
    pub two_experts: bool,
    /// Takes an input image (I2V, or TI2V's optional image).
    pub image_input: bool,
    pub has_text_encoder: bool,
}

/// Why a folder cannot be used; the text says what to do.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("no model folder given: type a path or use Browse…, or tick \"Demo model\"")]
    Empty,
    #[error("model folder not found: {0}")]
    Missing(PathBuf),
    #[error(
        "not a diffusers Wan pipeline folder (expected model_index.json, transformer/ and vae/): {detail}: {path}"
    )]
    NotPipeline { detail: String, path: PathBuf },
}

fn not_pipeline(path: &Path, detail: impl ToString) -> ModelError {
    ModelError::NotPipeline { detail: detail.to_string(), path: path.to_path_buf() }
}

/// Inspects `root` (a pipeline folder).
pub fn inspect(root: &Path) -> Result<ModelInfo, ModelError> {
    if root.as_os_str().is_empty() {
        return Err(ModelError::Empty);
    }
    if !root.is_dir() {
        return Err(ModelError::Missing(root.to_path_buf()));
    }
    let index = ModelIndex::read(root).map_err(|e| not_pipeline(root, e))?;
    let dit_dir = weights::component_dir(root, "transformer").map_err(|e| not_pipeline(root, e))?;
    let dit: transformer::Config = weights::load_config(&dit_dir).map_err(|e| not_pipeline(root, e))?;
    let vae_dir = weights::component_dir(root, "vae").map_err(|e| not_pipeline(root, e))?;
    let vae_cfg: vae::Config = weights::load_config(&vae_dir).map_err(|e| not_pipeline(root, e))?;
    let dit_ckpt = Checkpoint::open(&dit_dir).map_err(|e| not_pipeline(root, e))?;
    let vae_ckpt = Checkpoint::open(&vae_dir).map_err(|e| not_pipeline(root, e))?;
    let two_experts = root.join("transformer_2/config.json").is_file();
    let expert_2_bytes = if two_experts {
        Checkpoint::open(&root.join("transformer_2")).map(|c| c.stored_bytes()).unwrap_or(0)
    } else {
        0
    };
    let weights_bytes = dit_ckpt.stored_bytes() + expert_2_bytes + vae_ckpt.stored_bytes();
    let dtype = dit_ckpt.files.first().and_then(|f| stored_dtype(f)).unwrap_or_else(|| "unknown".into());
    let vae_spatial = vae_cfg.scale_factor_spatial;
    let i2v = index.class_name.contains("ImageToVideo");
    let layout = match (index.expand_timesteps, two_experts, i2v) {
        (true, _, _) => "Wan2.2 TI2V layout",
        (false, true, true) => "Wan2.2 I2V-A14B layout",
        (false, true, false) => "Wan2.2 T2V-A14B layout",
        (false, false, true) => "Wan2.1 I2V layout",
        (false, false, false) => "Wan2.1 T2V layout",
    };
    let kind =
        format!("{layout} ({}), {} blocks × {} heads", index.class_name, dit.num_layers, dit.num_attention_heads);
    Ok(ModelInfo {
        root: root.to_path_buf(),
        kind,
        weights_bytes,
        dtype,
        size_multiple: vae_spatial * dit.patch_size[1],
        num_heads: dit.num_attention_heads,
        text_dim: dit.text_dim,
        z_dim: vae_cfg.z_dim,
        vae_spatial,
        two_experts,
        image_input: i2v || index.expand_timesteps,
        has_text_encoder: root.join("text_encoder").is_dir() && root.join("tokenizer").is_dir(),
    })
}

/// The dtype of the first tensor in a safetensors header (`[u64 LE length][JSON]`).
fn stored_dtype(file: &Path) -> Option<String> {
    let mut f = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len).min(100 << 20) as usize;
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    json.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .find_map(|(_, v)| v.get("dtype")?.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_pipeline_is_recognised() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/pipeline");
        let info = inspect(&root).unwrap();
        assert!(info.kind.starts_with("Wan2.2 TI2V layout (WanPipeline)"), "{}", info.kind);
        assert_eq!(info.size_multiple, 32);
        assert_eq!(info.num_heads, 4);
        assert_eq!(info.dtype, "F32");
        assert!(info.weights_bytes > 0);
    }

    #[test]
    fn missing_and_wrong_folders_say_what_to_do() {
        assert_eq!(inspect(Path::new("")), Err(ModelError::Empty));
        let missing = inspect(Path::new("/nonexistent/wan")).unwrap_err().to_string();
        assert_eq!(missing, "model folder not found: /nonexistent/wan");
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("not a diffusers Wan pipeline folder"), "{err}");
    }
}
