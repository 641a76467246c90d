//! The built-in demo model: a tiny pipeline with the Wan2.2 TI2V architecture (2 transformer blocks
//! of 4 heads, a 16-channel VAE) and seeded random weights, written once into the user's data dir
//! so the studio can be tried without downloading anything. Its pictures are noise: the weights
//! are random, only the architecture and the parallel machinery are real.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use tessera_engine::api::random_models::{write_pipeline, PipelineSpec, StoreDtype, DIFFUSERS_SHARD_BYTES};

/// Bump when the demo's configs or seed change: a new folder is written beside the old one.
const DEMO_FOLDER: &str = "demo-model-v1";
const DEMO_SEED: u64 = 2026;

/// What the UI says wherever demo output is shown.
pub const NOISE_NOTE: &str = "Demo model: random weights with the real Wan2.2 architecture and no text encoder (the prompt seeds stand-in embeddings) — its pictures are noise by design.";

/// `$TESSERA_DATA_DIR`, else `$XDG_DATA_HOME/tessera`, else `~/.local/share/tessera`.
pub fn data_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("TESSERA_DATA_DIR") {
        return Some(dir);
    }
    let base = env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local/share")))?;
    Some(base.join("tessera"))
}

/// The demo's folder under `data_dir` (written or not).
pub fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join(DEMO_FOLDER)
}

/// Whether the demo folder has been written under `data_dir`.
pub fn is_written(data_dir: &Path) -> bool {
    folder(data_dir).join("model_index.json").is_file()
}

/// The demo pipeline's spec: the golden test pipeline's tiny sizes, TI2V layout and scheduler.
pub fn spec() -> Result<PipelineSpec> {
    let transformer = serde_json::from_value(json!({
        "added_kv_proj_dim": null, "attention_head_dim": 12, "cross_attn_norm": true, "eps": 1e-06,
        "ffn_dim": 64, "freq_dim": 32, "image_dim": null, "in_channels": 8, "num_attention_heads": 4,
        "num_layers": 2, "out_channels": 8, "patch_size": [1, 2, 2], "pos_embed_seq_len": null,
        "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 32
    }))
    .context("demo transformer config")?;
    let vae = serde_json::from_value(json!({
        "attn_scales": [], "base_dim": 16, "decoder_base_dim": 24, "dim_mult": [1, 2, 2, 2], "dropout": 0.0,
        "in_channels": 12, "is_residual": true, "num_res_blocks": 1, "out_channels": 12, "patch_size": 2,
        "scale_factor_spatial": 16, "scale_factor_temporal": 4, "temperal_downsample": [false, true, true],
        "z_dim": 8,
        "latents_mean": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "latents_std": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    }))
    .context("demo VAE config")?;
    Ok(PipelineSpec {
        class_name: "WanPipeline",
        expand_timesteps: true,
        boundary_ratio: None,
        transformer,
        transformer_2: None,
        vae,
        flow_shift: 5.0,
    })
}

/// The demo folder under `data_dir`, written on first use. Written into a temporary folder and
/// renamed, so an interrupted first start never leaves a half-written model behind.
pub fn ensure(data_dir: &Path) -> Result<PathBuf> {
    let root = folder(data_dir);
    if is_written(data_dir) {
        return Ok(root);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let tmp = data_dir.join(format!("{DEMO_FOLDER}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("clearing {}", tmp.display()))?;
    }
    write_pipeline(&tmp, &spec()?, DEMO_SEED, StoreDtype::F32, DIFFUSERS_SHARD_BYTES)
        .map(|_| ())
        .with_context(|| format!("writing the demo model to {}", tmp.display()))?;
    match std::fs::rename(&tmp, &root) {
        Ok(()) => Ok(root),
        // Another studio (or test) finished first: theirs is identical (same seed), use it.
        Err(_) if root.join("model_index.json").is_file() => {
            std::fs::remove_dir_all(&tmp).ok();
            Ok(root)
        }
        Err(e) => Err(e).with_context(|| format!("moving the demo model to {}", root.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_written_once_deterministically_and_inspectable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let root_a = ensure(a.path()).unwrap();
        let root_b = ensure(b.path()).unwrap();
        let bytes = |root: &Path| std::fs::read(root.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
        assert_eq!(bytes(&root_a), bytes(&root_b), "same seed, same bytes");
        let modified = std::fs::metadata(root_a.join("model_index.json")).unwrap().modified().unwrap();
        assert_eq!(ensure(a.path()).unwrap(), root_a);
        let again = std::fs::metadata(root_a.join("model_index.json")).unwrap().modified().unwrap();
        assert_eq!(modified, again, "second use must not rewrite the model");
        let spec = tessera_engine::api::ModelSpec::from_path(&root_a).unwrap();
        assert_eq!((spec.size_multiple(), spec.num_heads(), spec.vae.z_dim), (32, 4, 8));
    }
}
