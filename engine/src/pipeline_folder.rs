//! A diffusers pipeline folder with the real architecture's configs and seeded random weights:
//! what `tessera make-model` writes and the benchmarks use.
//!
//! - Wan ([`PipelineSpec`]): what the diffusers converter (`scripts/convert_wan_to_diffusers.py`)
//!   produces for that model, minus the text encoder: `model_index.json`, `transformer/`
//!   (+ `transformer_2/` for A14B), `vae/` and `scheduler/`.
//! - HunyuanVideo 1.5 ([`Hv15Spec`]): the `hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-*`
//!   layout minus the text encoders: `model_index.json`, `transformer/`, `vae/`, `scheduler/`,
//!   `guider/`, and for image-to-video `image_encoder/` (SigLIP) and `feature_extractor/`.

use std::path::Path;

use serde_json::{json, Value};

use crate::models::hv15;
use crate::models::siglip;
use crate::models::wan::{transformer, vae};
use crate::random_weights::{self, StoreDtype, WrittenComponent};
use crate::tensor_io::write_file_atomic;

/// The diffusers version stamped into written configs (the one that produced the golden cases).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// Why a folder could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FolderError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "wan2.1-vae")]
    Wan21Vae,
    #[value(name = "wan2.2-vae")]
    Wan22Vae,
    #[value(name = "wan2.2-ti2v-5b")]
    Wan22Ti2v5b,
    #[value(name = "wan2.2-t2v-a14b")]
    Wan22T2vA14b,
    #[value(name = "wan2.2-i2v-a14b")]
    Wan22I2vA14b,
    #[value(name = "hv15-480p-t2v")]
    Hv15T2v480p,
    #[value(name = "hv15-720p-t2v")]
    Hv15T2v720p,
    #[value(name = "hv15-480p-i2v")]
    Hv15I2v480p,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Wan21Vae => "wan2.1-vae",
            Arch::Wan22Vae => "wan2.2-vae",
            Arch::Wan22Ti2v5b => "wan2.2-ti2v-5b",
            Arch::Wan22T2vA14b => "wan2.2-t2v-a14b",
            Arch::Wan22I2vA14b => "wan2.2-i2v-a14b",
            Arch::Hv15T2v480p => "hv15-480p-t2v",
            Arch::Hv15T2v720p => "hv15-720p-t2v",
            Arch::Hv15I2v480p => "hv15-480p-i2v",
        }
    }

    /// The HunyuanVideo 1.5 archs (written by [`Hv15Spec`]).
    pub fn is_hv15(self) -> bool {
        matches!(self, Arch::Hv15T2v480p | Arch::Hv15T2v720p | Arch::Hv15I2v480p)
    }
}

/// Everything a pipeline folder holds besides weights: what the diffusers converter
/// (`scripts/convert_wan_to_diffusers.py` 1185-1231) writes for each Wan2.2 model. T2V-A14B:
/// `WanPipeline`, `boundary_ratio` 0.875; I2V-A14B: `WanImageToVideoPipeline`, 0.9; TI2V-5B:
/// `WanPipeline` with `expand_timesteps`. Its `flow_shift` is 5.0 for TI2V-5B and 3.0 for the A14B
/// models, where the official Wan configs use 12.0 (T2V) and 5.0 (I2V).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    /// `WanPipeline` or `WanImageToVideoPipeline`.
    pub class_name: &'static str,
    /// TI2V-5B: per-token timesteps, image latent as frame 0.
    pub expand_timesteps: bool,
    /// A14B: the expert switch at `boundary_ratio · 1000`.
    pub boundary_ratio: Option<f64>,
    pub transformer: transformer::Config,
    /// A14B's low-noise expert (same config as `transformer`).
    pub transformer_2: Option<transformer::Config>,
    pub vae: vae::Config,
    /// UniPC `flow_shift` as the converter writes it (not the official Wan shift).
    pub flow_shift: f64,
}

impl PipelineSpec {
    /// The spec of a pipeline arch; `None` for the VAE-only archs.
    pub fn for_arch(arch: Arch, layers: Option<usize>) -> Result<Option<Self>, FolderError> {
        let dit =
            || transformer::transformer_config_for_arch(arch.name(), layers).map_err(|e| FolderError(e.to_string()));
        Ok(Some(match arch {
            Arch::Wan21Vae | Arch::Wan22Vae => return Ok(None),
            Arch::Hv15T2v480p | Arch::Hv15T2v720p | Arch::Hv15I2v480p => {
                return Err(FolderError(format!("{} is a HunyuanVideo 1.5 arch (see Hv15Spec)", arch.name())))
            }
            Arch::Wan22Ti2v5b => Self {
                class_name: "WanPipeline",
                expand_timesteps: true,
                boundary_ratio: None,
                transformer: dit()?,
                transformer_2: None,
                vae: vae::Config::wan22(),
                flow_shift: 5.0,
            },
            Arch::Wan22T2vA14b => Self {
                class_name: "WanPipeline",
                expand_timesteps: false,
                boundary_ratio: Some(0.875),
                transformer: dit()?,
                transformer_2: Some(dit()?),
                vae: vae::Config::wan21(),
                flow_shift: 3.0,
            },
            Arch::Wan22I2vA14b => Self {
                class_name: "WanImageToVideoPipeline",
                expand_timesteps: false,
                boundary_ratio: Some(0.9),
                transformer: dit()?,
                transformer_2: Some(dit()?),
                vae: vae::Config::wan21(),
                flow_shift: 3.0,
            },
        }))
    }

    /// `model_index.json` as `save_pretrained` writes it. The text encoder and tokenizer are not
    /// written, so they are `[null, null]` (diffusers then loads the pipeline without them, and
    /// `tessera generate` needs `--prompt-embeds`).
    pub fn model_index(&self) -> Value {
        let component = |class: &str| json!(["diffusers", class]);
        let none = json!([null, null]);
        let mut index = json!({
            "_class_name": self.class_name,
            "_diffusers_version": DIFFUSERS_VERSION,
            "boundary_ratio": self.boundary_ratio,
            "expand_timesteps": self.expand_timesteps,
            "scheduler": component("UniPCMultistepScheduler"),
            "text_encoder": none,
            "tokenizer": none,
            "transformer": component(transformer::config::CLASS_NAME),
            "transformer_2": if self.transformer_2.is_some() { component(transformer::config::CLASS_NAME) } else { none.clone() },
            "vae": component("AutoencoderKLWan"),
        });
        if self.class_name == "WanImageToVideoPipeline" {
            // Wan2.2 I2V has no CLIP image encoder (Wan2.1 I2V does).
            index["image_encoder"] = none.clone();
            index["image_processor"] = none;
        }
        index
    }

    /// `scheduler/scheduler_config.json`: the converter's
    /// `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
    /// num_train_timesteps=1000, flow_shift=s)` with every other key at diffusers' default, i.e. the
    /// key set `save_pretrained` writes (equal to the golden pipeline's but for `flow_shift`).
    pub fn scheduler_config(&self) -> Value {
        json!({
            "_class_name": "UniPCMultistepScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "disable_corrector": [],
            "dynamic_thresholding_ratio": 0.995,
            "final_sigmas_type": "zero",
            "flow_shift": self.flow_shift,
            "lower_order_final": true,
            "num_train_timesteps": 1000,
            "predict_x0": true,
            "prediction_type": "flow_prediction",
            "rescale_betas_zero_snr": false,
            "sample_max_value": 1.0,
            "shift_terminal": null,
            "sigma_max": null,
            "sigma_min": null,
            "solver_order": 2,
            "solver_p": null,
            "solver_type": "bh2",
            "steps_offset": 0,
            "thresholding": false,
            "time_shift_type": "exponential",
            "timestep_spacing": "linspace",
            "trained_betas": null,
            "use_beta_sigmas": false,
            "use_dynamic_shifting": false,
            "use_exponential_sigmas": false,
            "use_flow_sigmas": true,
            "use_karras_sigmas": false
        })
    }
}

/// A HunyuanVideo 1.5 pipeline folder: the transformer config of the published checkpoint
/// (`hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-{480p_t2v,720p_t2v,480p_i2v}`, equal to
/// the manifests in `tests/fixtures/golden/manifests`), the VAE's, and the scheduler shift and
/// guidance scale of the converter (`scripts/convert_hunyuan_video1_5_to_diffusers.py`: 480p
/// shift 5, 720p T2V shift 9, guidance 6).
#[derive(Debug, Clone, PartialEq)]
pub struct Hv15Spec {
    /// `HunyuanVideo15Pipeline` or `HunyuanVideo15ImageToVideoPipeline`.
    pub class_name: &'static str,
    pub transformer: hv15::transformer::Config,
    /// `target_size` and `task_type` of `transformer/config.json` (they only set the pipeline's
    /// default resolution; the forward does not read them).
    pub target_size: usize,
    pub task_type: &'static str,
    pub vae: hv15::vae::Config,
    /// Image-to-video: the SigLIP tower of `image_encoder/` (the published one, cut to `--layers`
    /// encoder layers like the transformer).
    pub image_encoder: Option<siglip::Config>,
    pub shift: f64,
    pub guidance_scale: f64,
}

impl Hv15Spec {
    /// The spec of an HV1.5 arch with `layers` dual-stream blocks (default: the real 54) and, for
    /// image-to-video, `layers` SigLIP layers (at most its real 27); `None` for the other archs.
    pub fn for_arch(arch: Arch, layers: Option<usize>) -> Result<Option<Self>, FolderError> {
        let (class_name, target_size, task_type, shift) = match arch {
            Arch::Hv15T2v480p => ("HunyuanVideo15Pipeline", 640, "t2v", 5.0),
            Arch::Hv15T2v720p => ("HunyuanVideo15Pipeline", 960, "t2v", 9.0),
            Arch::Hv15I2v480p => ("HunyuanVideo15ImageToVideoPipeline", 640, "i2v", 5.0),
            _ => return Ok(None),
        };
        let mut transformer = hv15::transformer::Config::default();
        if let Some(n) = layers {
            if n == 0 {
                return Err(FolderError("--layers must be at least 1".into()));
            }
            transformer.num_layers = n;
        }
        let image_encoder = (task_type == "i2v").then(|| {
            let real = siglip::Config::so400m_patch14_384();
            let num_hidden_layers = layers.map_or(real.num_hidden_layers, |n| n.min(real.num_hidden_layers));
            siglip::Config { num_hidden_layers, ..real }
        });
        Ok(Some(Self {
            class_name,
            transformer,
            target_size,
            task_type,
            vae: hv15::vae::Config::default(),
            image_encoder,
            shift,
            guidance_scale: 6.0,
        }))
    }

    /// `transformer/config.json` as `save_pretrained` writes it (diffusers' keys only: the
    /// engine's `glyph_hidden_dim` stays out at its default).
    pub fn transformer_config(&self) -> Value {
        let mut v = serde_json::to_value(&self.transformer).expect("config serialises");
        let obj = v.as_object_mut().expect("an object");
        if self.transformer.glyph_hidden_dim == hv15::transformer::Config::default().glyph_hidden_dim {
            obj.remove("glyph_hidden_dim");
        }
        obj.insert("_class_name".into(), "HunyuanVideo15Transformer3DModel".into());
        obj.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
        obj.insert("target_size".into(), self.target_size.into());
        obj.insert("task_type".into(), self.task_type.into());
        v
    }

    /// `vae/config.json`.
    pub fn vae_config(&self) -> Value {
        let mut v = serde_json::to_value(&self.vae).expect("config serialises");
        let obj = v.as_object_mut().expect("an object");
        obj.insert("_class_name".into(), hv15::vae::CLASS_NAME.into());
        obj.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
        v
    }

    /// `model_index.json`: the text encoders are not written, so they are `[null, null]` (prompts
    /// are given as embeddings, or the encoders' folders added); image-to-video names its image
    /// encoder and feature extractor as the published folder does.
    pub fn model_index(&self) -> Value {
        let component = |class: &str| json!(["diffusers", class]);
        let none = json!([null, null]);
        let mut index = json!({
            "_class_name": self.class_name,
            "_diffusers_version": DIFFUSERS_VERSION,
            "guider": component("ClassifierFreeGuidance"),
            "scheduler": component("FlowMatchEulerDiscreteScheduler"),
            "text_encoder": none,
            "text_encoder_2": none,
            "tokenizer": none,
            "tokenizer_2": none,
            "transformer": component("HunyuanVideo15Transformer3DModel"),
            "vae": component(hv15::vae::CLASS_NAME),
        });
        if self.image_encoder.is_some() {
            index["image_encoder"] = json!(["transformers", "SiglipVisionModel"]);
            index["feature_extractor"] = json!(["transformers", "SiglipImageProcessor"]);
        }
        index
    }

    /// `feature_extractor/preprocessor_config.json`: `SiglipImageProcessor` as siglip-so400m-patch14-384
    /// has it (bicubic resize to the tower's square, rescale by 1/255, normalise by 0.5/0.5), with
    /// the keys transformers 5 saves (the golden feature extractor's).
    pub fn feature_extractor_config(cfg: &siglip::Config) -> Value {
        json!({
            "do_convert_rgb": true,
            "do_normalize": true,
            "do_rescale": true,
            "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "size": { "height": cfg.image_size, "width": cfg.image_size }
        })
    }

    /// `scheduler/scheduler_config.json`: `FlowMatchEulerDiscreteScheduler(shift=s)` with every
    /// other key at diffusers' default (the golden pipeline's key set).
    pub fn scheduler_config(&self) -> Value {
        json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            "base_image_seq_len": 256,
            "base_shift": 0.5,
            "invert_sigmas": false,
            "max_image_seq_len": 4096,
            "max_shift": 1.15,
            "num_train_timesteps": 1000,
            "shift": self.shift,
            "shift_terminal": null,
            "stochastic_sampling": false,
            "time_shift_type": "exponential",
            "use_beta_sigmas": false,
            "use_dynamic_shifting": false,
            "use_exponential_sigmas": false,
            "use_karras_sigmas": false
        })
    }

    /// `guider/guider_config.json` (`ClassifierFreeGuidance`).
    pub fn guider_config(&self) -> Value {
        json!({
            "_class_name": "ClassifierFreeGuidance",
            "_diffusers_version": DIFFUSERS_VERSION,
            "enabled": true,
            "guidance_rescale": 0.0,
            "guidance_scale": self.guidance_scale,
            "start": 0.0,
            "stop": 1.0,
            "use_original_formulation": false
        })
    }
}

/// Writes the HV1.5 pipeline folder of `spec` under `out` (transformer in `shard_bytes` shards
/// with an index, as diffusers saves it); `model_index.json` last.
pub fn write_hv15_pipeline(
    out: &Path,
    spec: &Hv15Spec,
    seed: u64,
    dtype: StoreDtype,
    shard_bytes: u64,
) -> Result<Vec<(&'static str, WrittenComponent)>, FolderError> {
    let fail = |dir: &str, e: crate::tensor_io::TensorIoError| {
        FolderError(format!("writing {dir}/ to {}: {e}", out.display()))
    };
    let cfg = &spec.transformer;
    cfg.validate().map_err(FolderError)?;
    let t = random_weights::write_component(
        &out.join("transformer"),
        "diffusion_pytorch_model",
        &spec.transformer_config(),
        |vb| hv15::transformer::HunyuanVideo15Transformer3DModel::new(cfg, vb).map(|_| ()),
        seed,
        dtype,
        shard_bytes,
    )
    .map_err(|e| fail("transformer", e))?;
    let v = random_weights::write_hv15_vae(&out.join("vae"), &spec.vae, seed, dtype).map_err(|e| fail("vae", e))?;
    let mut written = vec![("transformer", t), ("vae", v)];
    let mut configs = vec![
        ("scheduler", "scheduler_config.json", spec.scheduler_config()),
        ("guider", "guider_config.json", spec.guider_config()),
    ];
    if let Some(cfg) = &spec.image_encoder {
        let dir = out.join("image_encoder");
        let w = random_weights::write_siglip_vision(&dir, cfg, seed, dtype).map_err(|e| fail("image_encoder", e))?;
        written.push(("image_encoder", w));
        configs.push(("feature_extractor", "preprocessor_config.json", Hv15Spec::feature_extractor_config(cfg)));
    }
    for (dir, file, value) in configs {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| FolderError(format!("creating {dir}/: {e}")))?;
        write_json(&out.join(dir).join(file), &value)?;
    }
    write_json(&out.join("model_index.json"), &spec.model_index())?;
    Ok(written)
}

/// The seed of `transformer_2`: the two experts share tensor names, so the same seed would make
/// them identical (and hide a wrong expert switch).
fn expert_2_seed(seed: u64) -> u64 {
    seed ^ 0x7472_616e_7366_6f32 // "transfo2"
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &Value) -> Result<(), FolderError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FolderError(e.to_string()))?;
    write_file_atomic(path, |tmp| std::fs::write(tmp, text).map_err(|e| e.to_string()))
        .map_err(|e| FolderError(format!("writing {}: {e}", path.display())))
}

/// Writes the whole pipeline folder of `spec` under `out` and returns what each component holds.
/// `model_index.json` goes last, so a folder interrupted mid-write does not look like a pipeline.
pub fn write_pipeline(
    out: &Path,
    spec: &PipelineSpec,
    seed: u64,
    dtype: StoreDtype,
    shard_bytes: u64,
) -> Result<Vec<(&'static str, WrittenComponent)>, FolderError> {
    let mut written = Vec::new();
    let fail = |dir: &str, e: crate::tensor_io::TensorIoError| {
        FolderError(format!("writing {dir}/ to {}: {e}", out.display()))
    };
    let w = random_weights::write_transformer(&out.join("transformer"), &spec.transformer, seed, dtype, shard_bytes)
        .map_err(|e| fail("transformer", e))?;
    written.push(("transformer", w));
    if let Some(cfg) = &spec.transformer_2 {
        let w =
            random_weights::write_transformer(&out.join("transformer_2"), cfg, expert_2_seed(seed), dtype, shard_bytes)
                .map_err(|e| fail("transformer_2", e))?;
        written.push(("transformer_2", w));
    }
    let w = random_weights::write_vae(&out.join("vae"), &spec.vae, seed, dtype).map_err(|e| fail("vae", e))?;
    written.push(("vae", w));
    std::fs::create_dir_all(out.join("scheduler")).map_err(|e| FolderError(format!("creating scheduler/: {e}")))?;
    write_json(&out.join("scheduler/scheduler_config.json"), &spec.scheduler_config())?;
    write_json(&out.join("model_index.json"), &spec.model_index())?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn golden(rel: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden").join(rel);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn model_index_is_what_diffusers_writes() {
        let ti2v = PipelineSpec::for_arch(Arch::Wan22Ti2v5b, Some(1)).unwrap().unwrap();
        // The golden TI2V folder was written by save_pretrained: identical, key for key.
        assert_eq!(ti2v.model_index(), golden("pipeline/model_index.json"));

        let t2v = PipelineSpec::for_arch(Arch::Wan22T2vA14b, None).unwrap().unwrap().model_index();
        assert_eq!(t2v["_class_name"], "WanPipeline");
        assert_eq!(t2v["boundary_ratio"], 0.875);
        assert_eq!(t2v["expand_timesteps"], false);
        assert_eq!(t2v["transformer_2"], json!(["diffusers", "WanTransformer3DModel"]));
        assert_eq!(keys(&t2v), keys(&golden("pipeline/model_index.json")));

        let i2v = PipelineSpec::for_arch(Arch::Wan22I2vA14b, None).unwrap().unwrap().model_index();
        assert_eq!(i2v["_class_name"], "WanImageToVideoPipeline");
        assert_eq!(i2v["boundary_ratio"], 0.9);
        assert_eq!(i2v["transformer_2"], json!(["diffusers", "WanTransformer3DModel"]));
        assert_eq!(keys(&i2v), keys(&golden("pipeline_i2v/model_index.json")));
    }

    #[test]
    fn scheduler_config_has_the_converter_shift_and_diffusers_keys() {
        let golden_sched = golden("pipeline/scheduler/scheduler_config.json");
        let ti2v = PipelineSpec::for_arch(Arch::Wan22Ti2v5b, None).unwrap().unwrap();
        assert_eq!(ti2v.scheduler_config(), golden_sched, "TI2V (flow_shift 5) equals the golden config");
        for arch in [Arch::Wan22T2vA14b, Arch::Wan22I2vA14b] {
            let s = PipelineSpec::for_arch(arch, None).unwrap().unwrap().scheduler_config();
            assert_eq!(s["flow_shift"], 3.0);
            assert_eq!(keys(&s), keys(&golden_sched));
        }
    }

    #[test]
    fn configs_are_the_real_ones() {
        let manifest = |name: &str| golden(&format!("manifests/{name}.json"))["config"].clone();
        for (arch, m) in [
            (Arch::Wan22Ti2v5b, "wan2.2-ti2v-5b-transformer"),
            (Arch::Wan22T2vA14b, "wan2.2-t2v-a14b-transformer"),
            (Arch::Wan22I2vA14b, "wan2.2-i2v-a14b-transformer"),
        ] {
            let spec = PipelineSpec::for_arch(arch, None).unwrap().unwrap();
            let want: transformer::Config = serde_json::from_value(manifest(m)).unwrap();
            assert_eq!(spec.transformer, want, "{m}");
            assert_eq!(spec.transformer_2.is_some(), arch != Arch::Wan22Ti2v5b);
            let vae_manifest = if arch == Arch::Wan22Ti2v5b { "wan2.2-vae" } else { "wan2.1-vae" };
            let mut want: vae::Config = serde_json::from_value(manifest(vae_manifest)).unwrap();
            if arch == Arch::Wan22Ti2v5b {
                // The Wan2.2 VAE manifest holds placeholder stats (0 / 1); the Hub config has the
                // real 48 per-channel values, which `Config::wan22` carries.
                assert!(want.latents_mean.iter().all(|m| *m == 0.0));
                want.latents_mean = spec.vae.latents_mean.clone();
                want.latents_std = spec.vae.latents_std.clone();
            }
            assert_eq!(spec.vae, want, "{vae_manifest}");
        }
        let cut = PipelineSpec::for_arch(Arch::Wan22T2vA14b, Some(2)).unwrap().unwrap();
        assert_eq!(cut.transformer.num_layers, 2);
        assert_eq!(cut.transformer_2.unwrap().num_layers, 2);
        assert!(PipelineSpec::for_arch(Arch::Wan22Ti2v5b, Some(0)).is_err());
        assert!(PipelineSpec::for_arch(Arch::Wan21Vae, None).unwrap().is_none());
    }

    /// The written configs are the published ones: each transformer config equals its
    /// checkpoint's manifest config key for key (diffusers' `_use_default_values` aside), the
    /// VAE's too, and the module tree asks for exactly the manifest's tensors.
    #[test]
    fn hv15_configs_and_tensors_are_the_real_ones() {
        let manifest = |name: &str| golden(&format!("manifests/{name}.json"));
        let strip = |mut v: Value| {
            let obj = v.as_object_mut().unwrap();
            for k in ["_use_default_values", "_class_name", "_diffusers_version", "_name_or_path"] {
                obj.remove(k);
            }
            v
        };
        for (arch, m) in [
            (Arch::Hv15T2v480p, "hv15-480p-t2v-transformer"),
            (Arch::Hv15T2v720p, "hv15-720p-t2v-transformer"),
            (Arch::Hv15I2v480p, "hv15-480p-i2v-transformer"),
        ] {
            let spec = Hv15Spec::for_arch(arch, None).unwrap().unwrap();
            let want = manifest(m);
            assert_eq!(strip(spec.transformer_config()), strip(want["config"].clone()), "{m}");
            let tensors = crate::random_weights::requested_tensors(|vb| {
                hv15::transformer::HunyuanVideo15Transformer3DModel::new(&spec.transformer, vb).map(|_| ())
            })
            .unwrap();
            let names: Vec<&String> = tensors.keys().collect();
            let mut want_names: Vec<&String> = want["tensors"].as_object().unwrap().keys().collect();
            want_names.sort();
            assert_eq!(names.len(), 1801, "{m}");
            assert_eq!(names, want_names, "{m}");
            for (k, shape) in &tensors {
                let w: Vec<usize> =
                    want["tensors"][k].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                assert_eq!(shape, &w, "{m}: {k}");
            }
            assert_eq!(strip(spec.vae_config()), strip(manifest("hv15-vae")["config"].clone()));
            assert_eq!(spec.model_index()["_class_name"], spec.class_name);
        }
        let i2v = Hv15Spec::for_arch(Arch::Hv15I2v480p, Some(2)).unwrap().unwrap();
        assert_eq!(i2v.transformer.num_layers, 2);
        // I2V writes its SigLIP tower and feature extractor: model_index names them as the golden
        // I2V folder does (transformers 5 calls the processor `SiglipImageProcessorPil`; the
        // published folder, saved by transformers 4, `SiglipImageProcessor`).
        let index = i2v.model_index();
        assert_eq!(index["image_encoder"], json!(["transformers", "SiglipVisionModel"]));
        assert_eq!(index["feature_extractor"], json!(["transformers", "SiglipImageProcessor"]));
        assert_eq!(keys(&index), keys(&golden("../hv15/pipeline_i2v/model_index.json")));
        assert_eq!(i2v.image_encoder.as_ref().unwrap().num_hidden_layers, 2);
        assert_eq!(
            Hv15Spec::for_arch(Arch::Hv15I2v480p, Some(60)).unwrap().unwrap().image_encoder.unwrap().num_hidden_layers,
            27
        );
        assert!(Hv15Spec::for_arch(Arch::Hv15T2v480p, None).unwrap().unwrap().image_encoder.is_none());
        assert!(Hv15Spec::for_arch(Arch::Hv15T2v480p, Some(0)).is_err());
        assert!(Hv15Spec::for_arch(Arch::Wan22Ti2v5b, None).unwrap().is_none());
        assert!(PipelineSpec::for_arch(Arch::Hv15T2v720p, None).is_err());
        // The scheduler and guider configs have the golden pipeline's keys.
        let t2v = Hv15Spec::for_arch(Arch::Hv15T2v720p, None).unwrap().unwrap();
        assert_eq!(t2v.scheduler_config()["shift"], 9.0);
        let mut golden_sched = golden("../hv15/pipeline/scheduler/scheduler_config.json");
        golden_sched["shift"] = 9.0.into();
        assert_eq!(t2v.scheduler_config(), golden_sched);
        assert_eq!(t2v.guider_config(), golden("../hv15/pipeline/guider/guider_config.json"));
        let mut index = golden("../hv15/pipeline/model_index.json");
        index["_diffusers_version"] = DIFFUSERS_VERSION.into();
        assert_eq!(t2v.model_index(), index);
    }

    /// The SigLIP files: the config is the so400m tower's with transformers 5's keys (the golden
    /// tiny tower's config is reproduced value for value from its fields), the feature extractor
    /// the golden one at 384 pixels, and the module tree asks for the golden tower's tensor names
    /// (layer for layer, with the pooling head).
    #[test]
    fn hv15_i2v_siglip_files_are_the_real_ones() {
        let golden_cfg = golden("../hv15/siglip/image_encoder/config.json");
        let tiny = siglip::Config::from_json(&golden_cfg.to_string()).unwrap();
        assert_eq!(tiny.to_transformers_json("float32"), golden_cfg);
        let real = Hv15Spec::for_arch(Arch::Hv15I2v480p, None).unwrap().unwrap().image_encoder.unwrap();
        assert_eq!((real.hidden_size, real.intermediate_size, real.num_attention_heads), (1152, 4304, 16));
        assert_eq!((real.image_size, real.patch_size, real.num_hidden_layers, real.num_patches()), (384, 14, 27, 729));
        let mut fe = golden("../hv15/siglip/feature_extractor/preprocessor_config.json");
        fe["size"] = json!({ "height": 384, "width": 384 });
        assert_eq!(Hv15Spec::feature_extractor_config(&real), fe);

        let shapes = |file: &Path| -> Vec<(String, Vec<usize>)> {
            let table = crate::weights::TensorTable::open(&[file.to_path_buf()], &|k| Some(k.to_string())).unwrap();
            table.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect()
        };
        let tmp = tempfile::tempdir().unwrap();
        let w = random_weights::write_siglip_vision(tmp.path(), &tiny, 0, StoreDtype::F32).unwrap();
        let want = shapes(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/hv15/siglip/image_encoder/model.safetensors"),
        );
        assert_eq!(shapes(&tmp.path().join("model.safetensors")), want);
        assert_eq!(w.tensors, want.len());
        assert!(want.iter().any(|(k, _)| k == "head.probe"), "the golden tower keeps its pooling head");
    }
}
