//! Seeded random checkpoints of the *real* architectures (`tessera make-model`): the way to test and
//! benchmark at real size without downloading weights.
//!
//! The tensor list is not written by hand: the model is built once on a [`RecordingBackend`], and
//! every tensor it asks for is filled with values whose scale keeps activations sane (weights
//! `N(0, 1/fan_in)`, biases small, norm gains near 1). Each tensor's values depend only on the seed
//! and the tensor's name, so a checkpoint is reproducible whatever order it is written in. Large
//! models are written as diffusers-style shards with an index.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::tensor_io::{write_file_atomic, TensorIoError};
use crate::weights::RecordingBackend;

/// Storage dtype of a written checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    Bf16,
}

/// What one call wrote.
#[derive(Debug, Clone)]
pub struct WrittenComponent {
    pub tensors: usize,
    pub params: usize,
    pub bytes: u64,
    pub shards: usize,
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the user seed: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Values for one tensor, chosen by its role (inferred from the key name).
pub fn random_values(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(name_seed(seed, name));
    let leaf = name.rsplit('.').next().unwrap_or(name);
    // Norm gains: RMS `gamma`s and 1-D weights (a 2-D weight under a `norm…` module, such as
    // HunyuanVideo 1.5's `norm1.linear`, is a projection and gets the fan-in scale).
    let is_norm = leaf == "gamma" || (leaf == "weight" && shape.len() == 1);
    if is_norm {
        return (0..n).map(|_| 1.0 + 0.05 * (rng.random::<f32>() * 2.0 - 1.0)).collect();
    }
    if leaf == "bias" {
        return (0..n).map(|_| 0.02 * (rng.random::<f32>() * 2.0 - 1.0)).collect();
    }
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let std = if shape.len() <= 1 { 0.02 } else { (1.0 / fan_in as f64).sqrt() };
    let normal = Normal::new(0.0f32, std as f32).expect("finite std");
    (0..n).map(|_| normal.sample(&mut rng)).collect()
}

/// `n` standard-normal values from `seed` (benchmark inputs, test latents).
pub fn standard_normal(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect()
}

fn to_bytes(values: &[f32], dtype: StoreDtype) -> Vec<u8> {
    match dtype {
        StoreDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StoreDtype::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// Writes `config` and seeded random weights for every tensor `build` asks for into `dir`
/// (created if needed). Shards hold at most `shard_bytes`; one shard is written as
/// `diffusion_pytorch_model.safetensors` (or `file_stem.safetensors`), several get an index.
pub fn write_component(
    dir: &Path,
    file_stem: &str,
    config: &serde_json::Value,
    build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<()>,
    seed: u64,
    dtype: StoreDtype,
    shard_bytes: u64,
) -> Result<WrittenComponent, TensorIoError> {
    let err = |msg: String| TensorIoError::Write { path: dir.to_path_buf(), msg };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let rec = RecordingBackend::new();
    build(rec.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu)).map_err(|e| err(e.to_string()))?;
    let tensors = rec.requested();
    let elem = match dtype {
        StoreDtype::F32 => 4u64,
        StoreDtype::Bf16 => 2,
    };
    // Greedy shards in name order, as diffusers' save_pretrained does.
    let mut shards: Vec<Vec<(&String, &Vec<usize>)>> = vec![vec![]];
    let mut cur = 0u64;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() as u64 * elem;
        if cur > 0 && cur + bytes > shard_bytes {
            shards.push(vec![]);
            cur = 0;
        }
        shards.last_mut().expect("one shard").push((name, shape));
        cur += bytes;
    }
    let n_shards = shards.len();
    let file_name = |i: usize| {
        if n_shards == 1 {
            format!("{file_stem}.safetensors")
        } else {
            format!("{file_stem}-{:05}-of-{n_shards:05}.safetensors", i + 1)
        }
    };
    let st_dtype = match dtype {
        StoreDtype::F32 => Dtype::F32,
        StoreDtype::Bf16 => Dtype::BF16,
    };
    let mut weight_map = BTreeMap::new();
    let mut total_bytes = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = shard
            .par_iter()
            .map(|(name, shape)| {
                ((*name).clone(), (*shape).clone(), to_bytes(&random_values(seed, name, shape), dtype))
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(st_dtype, s.clone(), b).map_err(|e| err(e.to_string()))?)))
            .collect::<Result<_, TensorIoError>>()?;
        let path = dir.join(file_name(i));
        write_file_atomic(&path, |tmp| safetensors::serialize_to_file(views, None, tmp).map_err(|e| e.to_string()))?;
        total_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        for (name, _) in shard {
            weight_map.insert((*name).clone(), file_name(i));
        }
    }
    if n_shards > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total_bytes }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&index).map_err(|e| err(e.to_string()))?;
        write_file_atomic(&dir.join(format!("{file_stem}.safetensors.index.json")), |tmp| {
            std::fs::write(tmp, text).map_err(|e| e.to_string())
        })?;
    }
    let text = serde_json::to_string_pretty(config).map_err(|e| err(e.to_string()))?;
    write_file_atomic(&dir.join("config.json"), |tmp| std::fs::write(tmp, text).map_err(|e| e.to_string()))?;
    Ok(WrittenComponent {
        tensors: tensors.len(),
        params: tensors.values().map(|s| s.iter().product::<usize>()).sum(),
        bytes: total_bytes,
        shards: n_shards,
    })
}

/// `cfg` as diffusers writes a `config.json`: its fields, `_class_name` and `_diffusers_version`.
fn diffusers_config(dir: &Path, cfg: &impl serde::Serialize, class: &str) -> Result<serde_json::Value, TensorIoError> {
    let mut config =
        serde_json::to_value(cfg).map_err(|e| TensorIoError::Write { path: dir.into(), msg: e.to_string() })?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("_class_name".into(), class.into());
        obj.insert("_diffusers_version".into(), "0.42.1".into());
    }
    Ok(config)
}

/// Writes a random `AutoencoderKLWan` folder (`config.json` + weights) for `cfg`.
pub fn write_vae(
    dir: &Path,
    cfg: &crate::models::wan::vae::Config,
    seed: u64,
    dtype: StoreDtype,
) -> Result<WrittenComponent, TensorIoError> {
    use crate::models::wan::vae::{AutoencoderKLWan, VaeParts};
    let config = diffusers_config(dir, cfg, "AutoencoderKLWan")?;
    write_component(
        dir,
        "diffusion_pytorch_model",
        &config,
        |vb| AutoencoderKLWan::new(cfg, VaeParts::Both, vb).map(|_| ()),
        seed,
        dtype,
        u64::MAX,
    )
}

/// Writes a random `AutoencoderKLHunyuanVideo15` folder (`config.json` + weights) for `cfg`.
pub fn write_hv15_vae(
    dir: &Path,
    cfg: &crate::models::hv15::vae::Config,
    seed: u64,
    dtype: StoreDtype,
) -> Result<WrittenComponent, TensorIoError> {
    use crate::models::hv15::vae::{AutoencoderKLHunyuanVideo15, CLASS_NAME};
    let config = diffusers_config(dir, cfg, CLASS_NAME)?;
    write_component(
        dir,
        "diffusion_pytorch_model",
        &config,
        |vb| AutoencoderKLHunyuanVideo15::new(cfg, crate::models::wan::vae::VaeParts::Both, vb).map(|_| ()),
        seed,
        dtype,
        u64::MAX,
    )
}

/// Writes a random `SiglipVisionModel` folder (`config.json` + `model.safetensors`, as transformers 5
/// saves it: no `vision_model.` prefix, and the pooling head `head.*` the engine never reads, so the
/// folder holds the published checkpoint's tensors).
pub fn write_siglip_vision(
    dir: &Path,
    cfg: &crate::models::siglip::Config,
    seed: u64,
    dtype: StoreDtype,
) -> Result<WrittenComponent, TensorIoError> {
    use crate::models::siglip::SiglipVisionModel;
    let torch_dtype = match dtype {
        StoreDtype::F32 => "float32",
        StoreDtype::Bf16 => "bfloat16",
    };
    write_component(
        dir,
        "model",
        &cfg.to_transformers_json(torch_dtype),
        |vb| {
            SiglipVisionModel::new(cfg, vb.clone())?;
            siglip_pooling_head(cfg, vb.pp("head"))
        },
        seed,
        dtype,
        u64::MAX,
    )
}

/// `SiglipMultiheadAttentionPoolingHead`'s tensors: the probe token, `nn.MultiheadAttention`'s packed
/// input projection and output projection, the layer norm and the MLP.
fn siglip_pooling_head(cfg: &crate::models::siglip::Config, vb: candle_nn::VarBuilder) -> candle_core::Result<()> {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    vb.get((1, 1, d), "probe")?;
    let attn = vb.pp("attention");
    attn.get((3 * d, d), "in_proj_weight")?;
    attn.get(3 * d, "in_proj_bias")?;
    candle_nn::linear(d, d, attn.pp("out_proj"))?;
    candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("layernorm"))?;
    candle_nn::linear(d, i, vb.pp("mlp").pp("fc1"))?;
    candle_nn::linear(i, d, vb.pp("mlp").pp("fc2"))?;
    Ok(())
}

/// diffusers' default `max_shard_size` ("5GB" = 5·10⁹ bytes): real-size transformers are written
/// in shards of this size, as the Hub checkpoints are (T2V-A14B in f32: 12 shards per expert).
pub const DIFFUSERS_SHARD_BYTES: u64 = 5_000_000_000;

/// Writes a random `WanTransformer3DModel` folder (`config.json` + weights, sharded with an index
/// above `shard_bytes`) for `cfg`. Only one shard's values are in memory at a time.
pub fn write_transformer(
    dir: &Path,
    cfg: &crate::models::wan::transformer::Config,
    seed: u64,
    dtype: StoreDtype,
    shard_bytes: u64,
) -> Result<WrittenComponent, TensorIoError> {
    use crate::models::wan::transformer::WanTransformer3DModel;
    cfg.validate().map_err(|e| TensorIoError::Write { path: dir.into(), msg: e.to_string() })?;
    write_component(
        dir,
        "diffusion_pytorch_model",
        &cfg.to_diffusers_json(),
        |vb| WanTransformer3DModel::new(cfg, vb).map(|_| ()),
        seed,
        dtype,
        shard_bytes,
    )
}

/// Every tensor `build` asks for (name → shape), without allocating any of them.
pub fn requested_tensors(
    build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<()>,
) -> candle_core::Result<BTreeMap<String, Vec<usize>>> {
    let rec = RecordingBackend::new();
    build(rec.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu))?;
    Ok(rec.requested())
}

/// The shards [`write_component`] makes of `tensors` (names per shard, greedy in name order), to
/// plan a real-size write without doing it. A test keeps the two in step.
pub fn plan_shards(tensors: &BTreeMap<String, Vec<usize>>, dtype: StoreDtype, shard_bytes: u64) -> Vec<Vec<String>> {
    let elem = match dtype {
        StoreDtype::F32 => 4u64,
        StoreDtype::Bf16 => 2,
    };
    let mut shards: Vec<Vec<String>> = vec![vec![]];
    let mut cur = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() as u64 * elem;
        if cur > 0 && cur + bytes > shard_bytes {
            shards.push(vec![]);
            cur = 0;
        }
        shards.last_mut().expect("one shard").push(name.clone());
        cur += bytes;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_depend_on_seed_and_name_only() {
        let a = random_values(7, "decoder.conv_in.weight", &[4, 3, 3, 3, 3]);
        assert_eq!(a, random_values(7, "decoder.conv_in.weight", &[4, 3, 3, 3, 3]));
        assert_ne!(a, random_values(8, "decoder.conv_in.weight", &[4, 3, 3, 3, 3]));
        assert_ne!(a, random_values(7, "decoder.conv_out.weight", &[4, 3, 3, 3, 3]));
        let gamma = random_values(7, "decoder.norm_out.gamma", &[8, 1, 1, 1]);
        assert!(gamma.iter().all(|g| (0.9..1.1).contains(g)));
    }

    #[test]
    fn written_vae_loads_and_decodes() {
        use crate::models::wan::vae::{self, Config, VaeParts};
        let dir = std::env::temp_dir().join(format!("tessera-rw-{}", std::process::id()));
        let cfg = Config {
            base_dim: 8,
            z_dim: 4,
            dim_mult: vec![1, 2, 2, 2],
            num_res_blocks: 1,
            latents_mean: vec![0.0; 4],
            latents_std: vec![1.0; 4],
            ..Config::wan21()
        };
        let w = write_vae(&dir, &cfg, 3, StoreDtype::F32).unwrap();
        assert!(w.tensors > 50 && w.shards == 1);
        let m = vae::load(&dir, VaeParts::Decoder, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let z = candle_core::Tensor::ones((1, 4, 2, 3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let video = m.decode(&z, None, &mut |_| {}).unwrap();
        assert_eq!(video.dims(), &[1, 3, 5, 24, 24]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn plan_shards_matches_what_write_component_writes() {
        use crate::models::wan::transformer::Config;
        let cfg = Config {
            num_attention_heads: 2,
            attention_head_dim: 8,
            in_channels: 4,
            out_channels: Some(4),
            text_dim: 8,
            freq_dim: 16,
            ffn_dim: 32,
            num_layers: 3,
            ..Config::default()
        };
        let dir = std::env::temp_dir().join(format!("tessera-rw-shards-{}", std::process::id()));
        // A shard size smaller than the model but larger than any tensor: several shards.
        let shard_bytes = 8 * 1024;
        let w = write_transformer(&dir, &cfg, 1, StoreDtype::F32, shard_bytes).unwrap();
        let tensors =
            requested_tensors(|vb| crate::models::wan::transformer::WanTransformer3DModel::new(&cfg, vb).map(|_| ()))
                .unwrap();
        let plan = plan_shards(&tensors, StoreDtype::F32, shard_bytes);
        assert!(w.shards > 2 && w.shards == plan.len(), "{} shards written, {} planned", w.shards, plan.len());
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("diffusion_pytorch_model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        for (i, names) in plan.iter().enumerate() {
            let file = format!("diffusion_pytorch_model-{:05}-of-{:05}.safetensors", i + 1, plan.len());
            for n in names {
                assert_eq!(index["weight_map"][n], file.as_str(), "{n}");
            }
        }
        // The sharded folder loads as one checkpoint.
        let m = crate::models::wan::transformer::WanTransformer3DModel::load(
            &dir,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.config(), &cfg);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn real_size_transformers_plan_diffusers_shards() {
        use crate::models::wan::transformer::{transformer_config_for_arch, WanTransformer3DModel};
        // Real widths and depths, planned (not written): f32 as the Hub stores them, 5 GB shards.
        for (arch, params, shards) in
            [("wan2.2-t2v-a14b", 14_288_491_584usize, 12usize), ("wan2.2-i2v-a14b", 14_288_901_184, 12)]
        {
            let cfg = transformer_config_for_arch(arch, None).unwrap();
            let tensors = requested_tensors(|vb| WanTransformer3DModel::new(&cfg, vb).map(|_| ())).unwrap();
            assert_eq!(tensors.values().map(|s| s.iter().product::<usize>()).sum::<usize>(), params, "{arch}");
            let plan = plan_shards(&tensors, StoreDtype::F32, DIFFUSERS_SHARD_BYTES);
            assert_eq!(plan.len(), shards, "{arch}");
            // No shard exceeds the limit: the most a writer holds at once.
            for names in &plan {
                let bytes: usize = names.iter().map(|n| tensors[n].iter().product::<usize>() * 4).sum();
                assert!(bytes as u64 <= DIFFUSERS_SHARD_BYTES, "{arch}: shard of {bytes} bytes");
            }
        }
    }
}
