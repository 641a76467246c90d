//! HunyuanVideo 1.5 diffusers folders (`HunyuanVideo15Pipeline`, `HunyuanVideo15ImageToVideoPipeline`):
//! their configs ([`Hv15Configs`]) and the [`ModelSpec`] of one.
//!
//! The family seam: the spec's shared `transformer` / `vae` fields hold the facts the
//! family-generic code reads (attention heads, blocks, latent channels, patch, compression, text
//! width; [`generic_dit`], [`generic_vae`]), and [`ModelSpec::hv15`] the HV1.5 configs the model
//! code loads with. `text_encoder/` (Qwen2.5-VL) and `tokenizer/` are the components prompt text
//! needs, `text_encoder_2/` + `tokenizer_2/` (ByT5) the glyph encoder for quoted text (read from the
//! root by the session); an I2V folder also has `image_encoder/` + `feature_extractor/` (SigLIP, read
//! from the root by the generate job). Its step-distilled transformer is a meanflow one.

use std::path::Path;

use super::{
    read_json, Component, Components, Family, Layout, ModelFiles, ModelIndex, ModelSpec, ModelSpecError, Variant,
    WeightsInfo,
};
use crate::models::hv15::transformer::Config as TransformerConfig;
use crate::models::hv15::vae::Config as VaeConfig;
use crate::models::siglip::Config as SiglipConfig;
use crate::models::wan::transformer::config::Config as DitConfig;
use crate::models::wan::vae::config::Config as WanVaeConfig;

/// The configs of an HV1.5 pipeline folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Hv15Configs {
    pub transformer: TransformerConfig,
    pub vae: VaeConfig,
    /// `guider/guider_config.json` `guidance_scale` (the folder's default CFG scale), if present.
    pub guidance_scale: Option<f64>,
    /// Image-to-video: `image_encoder/config.json` (the SigLIP tower the job loads, the planner counts).
    pub image_encoder: Option<SiglipConfig>,
}

/// `guider/guider_config.json` (`ClassifierFreeGuidance`): the field a run's default takes.
#[derive(serde::Deserialize)]
struct Guider {
    guidance_scale: Option<f64>,
}

/// The generic facts of the HV1.5 transformer, in the shape the planner and request checks read.
pub fn generic_dit(t: &TransformerConfig) -> DitConfig {
    DitConfig {
        patch_size: [t.patch_size_t, t.patch_size, t.patch_size],
        num_attention_heads: t.num_attention_heads,
        attention_head_dim: t.attention_head_dim,
        in_channels: t.in_channels,
        out_channels: Some(t.out_channels),
        text_dim: t.text_embed_dim,
        ffn_dim: t.ff_dim(),
        num_layers: t.num_layers,
        ..DitConfig::default()
    }
}

/// The generic facts of the HV1.5 VAE (latent channels, compression; no latent normalisation: the
/// pipeline divides by `scaling_factor` instead).
pub fn generic_vae(v: &VaeConfig) -> WanVaeConfig {
    let z = v.latent_channels;
    WanVaeConfig {
        z_dim: z,
        in_channels: v.in_channels,
        out_channels: v.out_channels,
        scale_factor_spatial: v.spatial_compression_ratio,
        scale_factor_temporal: v.temporal_compression_ratio,
        latents_mean: vec![0.0; z],
        latents_std: vec![1.0; z],
        ..WanVaeConfig::default()
    }
}

/// The spec of the HV1.5 pipeline folder `path` (configs and safetensors headers only).
pub(super) fn open(path: &Path, files: &ModelFiles) -> Result<ModelSpec, ModelSpecError> {
    let unsupported = |msg: &str| ModelSpecError::Unsupported { path: path.to_path_buf(), msg: msg.to_string() };
    if files.transformer.is_some() || files.transformer_2.is_some() || files.vae.is_some() || files.config.is_some() {
        return Err(unsupported(
            "HunyuanVideo 1.5 runs from its diffusers folder: drop «transformer», «vae» and «config» (component files are Wan-only so far)",
        ));
    }
    if !files.loras.is_empty() {
        return Err(unsupported("LoRAs are Wan-only so far: drop «lora» for HunyuanVideo 1.5"));
    }
    let index: ModelIndex = read_json(&path.join("model_index.json"), "model_index.json")?;
    let variant = match index.class_name.as_str() {
        "HunyuanVideo15Pipeline" => Variant::Hv15T2v,
        "HunyuanVideo15ImageToVideoPipeline" => Variant::Hv15I2v,
        other => {
            return Err(unsupported(&format!(
                "{other} is not ported (HunyuanVideo15Pipeline and HunyuanVideo15ImageToVideoPipeline folders run)"
            )))
        }
    };
    let config = |component: &'static str, file: &str| -> Result<std::path::PathBuf, ModelSpecError> {
        let p = path.join(component).join(file);
        if p.is_file() {
            Ok(p)
        } else {
            Err(ModelSpecError::Incomplete {
                family: "HunyuanVideo 1.5",
                expected: "model_index.json, transformer/, vae/, scheduler/ and, for prompt text, text_encoder/ and tokenizer/",
                detail: format!("no {component}/{file}"),
                path: path.to_path_buf(),
            })
        }
    };
    let transformer_cfg: TransformerConfig = read_json(&config("transformer", "config.json")?, "transformer")?;
    let vae_cfg: VaeConfig = read_json(&config("vae", "config.json")?, "vae")?;
    let scheduler_config: serde_json::Value = read_json(&config("scheduler", "scheduler_config.json")?, "scheduler")?;
    let guider = path.join("guider/guider_config.json");
    let guidance_scale = if guider.is_file() { read_json::<Guider>(&guider, "guider")?.guidance_scale } else { None };
    let invalid = |component, msg: String| ModelSpecError::Invalid { component, path: path.to_path_buf(), msg };
    transformer_cfg.validate().map_err(|e| invalid("transformer", e))?;
    vae_cfg.validate().map_err(|e| invalid("vae", e))?;
    let z = vae_cfg.latent_channels;
    if transformer_cfg.out_channels != z || transformer_cfg.in_channels != 2 * z + 1 {
        return Err(invalid(
            "transformer",
            format!(
                "in/out channels {}/{} do not fit the VAE's {z} latent channels (2·z + 1 / z): transformer/ and vae/ are from different models",
                transformer_cfg.in_channels, transformer_cfg.out_channels
            ),
        ));
    }
    if transformer_cfg.use_meanflow && variant != Variant::Hv15I2v {
        return Err(unsupported(
            "step-distilled (use_meanflow) transformers run in the image-to-video pipeline only (diffusers' text-to-video loop passes no timestep_r)",
        ));
    }
    let image_encoder = if variant == Variant::Hv15I2v {
        let text: serde_json::Value = read_json(&config("image_encoder", "config.json")?, "image_encoder")?;
        config("feature_extractor", "preprocessor_config.json")?;
        Some(SiglipConfig::from_json(&text.to_string()).map_err(|e| invalid("image_encoder", e))?)
    } else {
        None
    };
    let transformer = Component::folder(path.join("transformer"))?;
    let vae = Component::folder(path.join("vae"))?;
    let weights = WeightsInfo::read(&[&transformer, &vae])
        .map_err(|msg| ModelSpecError::Read { path: path.to_path_buf(), msg })?;
    Ok(ModelSpec {
        root: path.to_path_buf(),
        family: Family::HunyuanVideo15,
        variant,
        layout: Layout::DiffusersFolder,
        components: Components {
            transformer,
            transformer_2: None,
            vae,
            scheduler: Some(path.join("scheduler")),
            // The MLLM encoder and its tokenizer (`can_encode_text`); `ModelSpec::text_encoder`
            // (a UMT5 config) stays `None`.
            text_encoder: Some(path.join("text_encoder")).filter(|d| d.join("config.json").is_file()),
            tokenizer: Some(path.join("tokenizer")).filter(|d| d.join("tokenizer.json").is_file()),
        },
        index,
        transformer: generic_dit(&transformer_cfg),
        transformer_2: None,
        vae: generic_vae(&vae_cfg),
        text_encoder: None,
        weights,
        files: files.clone(),
        scheduler_config,
        assumed: Vec::new(),
        hv15: Some(Hv15Configs { transformer: transformer_cfg, vae: vae_cfg, guidance_scale, image_encoder }),
        demo: None,
    })
}
