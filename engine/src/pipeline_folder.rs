//! A diffusers Wan pipeline folder with the real architecture's configs and seeded random weights:
//! what `tessera make-model` writes and the benchmarks use. The
//! folder is what the diffusers converter (`scripts/convert_wan_to_diffusers.py`) produces for that
//! model, minus the text encoder: `model_index.json`, `transformer/` (+ `transformer_2/` for
//! A14B), `vae/` and `scheduler/`.

use std::path::Path;

use serde_json::{json, Value};

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
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Wan21Vae => "wan2.1-vae",
            Arch::Wan22Vae => "wan2.2-vae",
            Arch::Wan22Ti2v5b => "wan2.2-ti2v-5b",
            Arch::Wan22T2vA14b => "wan2.2-t2v-a14b",
            Arch::Wan22I2vA14b => "wan2.2-i2v-a14b",
        }
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
}
