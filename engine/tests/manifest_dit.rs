//! The Wan DiT asks for exactly the tensors of the real checkpoints: built at full size with the
//! recording backend (zero-stride zeros, nothing allocated), for each real model's manifest
//! (`tests/fixtures/golden/manifests/*transformer.json`, written from diffusers itself), and the
//! presets / config parsing agree with those manifests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use tessera_engine::models::wan::transformer::{transformer_config_for_arch, Config, WanTransformer3DModel};
use tessera_engine::weights::{load_config, read_manifest, RecordingBackend};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden");

fn record(cfg: &Config) -> Result<BTreeMap<String, Vec<usize>>> {
    let rec = RecordingBackend::new();
    let start = Instant::now();
    WanTransformer3DModel::new(cfg, rec.var_builder(DType::BF16, &Device::Cpu))?;
    // Guard against constructors that materialise weights or tables: a real-size build must stay
    // metadata-only (it takes milliseconds; allocating a 14B model would take far longer or OOM).
    let secs = start.elapsed().as_secs_f64();
    assert!(secs < 20.0, "recording build took {secs:.1}s: something is materialised at build time");
    Ok(rec.requested())
}

fn params(tensors: &BTreeMap<String, Vec<usize>>) -> u64 {
    tensors.values().map(|s| s.iter().product::<usize>() as u64).sum()
}

/// Builds from the manifest's own config and compares names and shapes exactly.
fn check_manifest(file: &str, preset: Config) -> Result<()> {
    let (config, tensors) = read_manifest(&Path::new(GOLDEN).join("manifests").join(file))?;
    let cfg: Config = serde_json::from_value(config)?;
    assert_eq!(cfg, preset, "{file}: manifest config differs from the preset");
    let requested = record(&cfg)?;
    let missing: Vec<_> = tensors.keys().filter(|k| !requested.contains_key(*k)).collect();
    let extra: Vec<_> = requested.keys().filter(|k| !tensors.contains_key(*k)).collect();
    let wrong: Vec<_> = requested
        .iter()
        .filter(|(k, s)| tensors.get(*k).is_some_and(|t| t != *s))
        .map(|(k, s)| (k, s, &tensors[k]))
        .collect();
    assert!(missing.is_empty(), "{file}: not requested: {missing:?}");
    assert!(extra.is_empty(), "{file}: requested but not in the checkpoint: {extra:?}");
    assert!(wrong.is_empty(), "{file}: shape mismatches (name, ours, checkpoint): {wrong:?}");
    println!("{file}: {} tensors, {} params match", requested.len(), params(&requested));
    Ok(())
}

#[test]
fn ti2v_5b_matches_manifest() -> Result<()> {
    check_manifest("wan2.2-ti2v-5b-transformer.json", Config::ti2v_5b())
}

#[test]
fn t2v_a14b_matches_manifest() -> Result<()> {
    check_manifest("wan2.2-t2v-a14b-transformer.json", Config::t2v_a14b())
}

#[test]
fn i2v_a14b_matches_manifest() -> Result<()> {
    check_manifest("wan2.2-i2v-a14b-transformer.json", Config::i2v_a14b())
}

/// Parameter counts of the models without a manifest here: the published sizes, which agree with
/// the Hub checkpoints' file sizes (fp32: 4 bytes a parameter).
#[test]
fn wan21_presets_have_the_published_parameter_counts() -> Result<()> {
    let small = record(&Config::wan21_1_3b())?;
    assert_eq!(params(&small), 1_418_996_800);
    assert_eq!(small.len(), 825);
    let t2v = record(&Config::wan21_14b())?;
    assert_eq!(params(&t2v), 14_288_491_584);
    assert_eq!(t2v.len(), 1095);
    let i2v = record(&Config::wan21_i2v_14b())?;
    assert_eq!(params(&i2v), 16_394_878_784);
    // The CLIP image branch (Wan2.1 I2V only): image embedder and the added k/v of cross-attention.
    let expect = [
        ("condition_embedder.image_embedder.norm1.weight", vec![1280]),
        ("condition_embedder.image_embedder.ff.net.0.proj.weight", vec![1280, 1280]),
        ("condition_embedder.image_embedder.ff.net.2.weight", vec![5120, 1280]),
        ("condition_embedder.image_embedder.norm2.bias", vec![5120]),
        ("blocks.39.attn2.add_k_proj.weight", vec![5120, 5120]),
        ("blocks.39.attn2.add_v_proj.bias", vec![5120]),
        ("blocks.39.attn2.norm_added_k.weight", vec![5120]),
    ];
    for (name, shape) in expect {
        assert_eq!(i2v.get(name), Some(&shape), "{name}");
    }
    assert!(!i2v.keys().any(|k| k.contains("norm_added_q")), "norm_added_q is ignored, as in diffusers");
    Ok(())
}

#[test]
fn golden_dit_config_parses() -> Result<()> {
    let cfg: Config = load_config(&Path::new(GOLDEN).join("dit/transformer"))?;
    assert_eq!((cfg.num_attention_heads, cfg.attention_head_dim, cfg.in_channels, cfg.out_channels()), (4, 12, 8, 8));
    assert_eq!((cfg.text_dim, cfg.freq_dim, cfg.ffn_dim, cfg.num_layers), (32, 32, 64, 2));
    assert_eq!(cfg.patch_size, [1, 2, 2]);
    assert_eq!(cfg.image_dim, None);
    cfg.validate()?;
    Ok(())
}

#[test]
fn arch_configs_write_diffusers_json() -> Result<()> {
    for (arch, preset) in [
        ("wan2.2-ti2v-5b", Config::ti2v_5b()),
        ("wan2.2-t2v-a14b", Config::t2v_a14b()),
        ("wan2.2-i2v-a14b", Config::i2v_a14b()),
    ] {
        assert_eq!(transformer_config_for_arch(arch, None)?, preset);
        let cut = transformer_config_for_arch(arch, Some(2))?;
        assert_eq!(cut, Config { num_layers: 2, ..preset.clone() });
        let json = cut.to_diffusers_json();
        assert_eq!(json["_class_name"], "WanTransformer3DModel");
        assert_eq!(json["patch_size"], serde_json::json!([1, 2, 2]));
        assert!(json["image_dim"].is_null());
        let back: Config = serde_json::from_value(json)?;
        assert_eq!(back, cut, "{arch}: config.json round trip");
    }
    let err = transformer_config_for_arch("wan2.2-t2v-5b", None).unwrap_err().to_string();
    assert!(err.contains("wan2.2-ti2v-5b"), "error lists the valid archs: {err}");
    assert!(transformer_config_for_arch("wan2.2-ti2v-5b", Some(0)).is_err());
    Ok(())
}

#[test]
fn inconsistent_image_branch_is_rejected() -> Result<()> {
    // The third-party TI2V mirror config: image_dim 1280 / added_kv_proj_dim 5120 with D = 3072.
    let text = r#"{"_class_name": "WanTransformer3DModel", "num_attention_heads": 24, "in_channels": 48,
        "out_channels": 48, "ffn_dim": 14336, "num_layers": 30, "image_dim": 1280, "added_kv_proj_dim": 5120}"#;
    let cfg: Config = serde_json::from_str(text)?;
    let err = WanTransformer3DModel::new(&cfg, RecordingBackend::new().var_builder(DType::F32, &Device::Cpu))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("added_kv_proj_dim 5120 must equal the inner dim 3072"), "{err}");
    assert!(err.contains("\"image_dim\": null"), "the error says how to fix config.json: {err}");
    for (img, kv) in [(Some(1280), None), (None, Some(5120))] {
        let cfg = Config { image_dim: img, added_kv_proj_dim: kv, ..Config::wan21_14b() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("must both be set"), "{err}");
    }
    Config::wan21_i2v_14b().validate()?;
    Ok(())
}

#[test]
fn config_defaults_follow_diffusers() -> Result<()> {
    // Only what differs from the defaults, as `_use_default_values` configs are written.
    let cfg: Config = serde_json::from_str(r#"{"in_channels": 36, "out_channels": null}"#)?;
    assert_eq!(cfg, Config { in_channels: 36, out_channels: None, ..Config::t2v_a14b() });
    assert_eq!(cfg.out_channels(), 36, "out_channels null means in_channels");
    assert_eq!(cfg.inner_dim(), 5120);
    assert_eq!(Config::default().eps, 1e-6);
    assert_eq!(Config::default().rope_max_seq_len, 1024);
    Ok(())
}
