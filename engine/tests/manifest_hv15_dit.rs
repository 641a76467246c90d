//! The HunyuanVideo 1.5 transformer module tree asks for exactly the tensors (names and shapes) of
//! the real 480p T2V checkpoint (`tests/fixtures/golden/manifests/hv15-480p-t2v-transformer.json`).
//! The 720p T2V and 480p I2V manifests list the same tensors (their configs differ only in
//! `target_size`/`task_type`, which no module reads). Built on a recording backend with zero-stride
//! tensors, so the 8.3B-parameter model costs no memory.

mod common;

use candle_core::{DType, Device};
use common::golden;
use tessera_engine::models::hv15::transformer::{Config, HunyuanVideo15Transformer3DModel};
use tessera_engine::weights::{read_manifest, RecordingBackend};

#[test]
fn hv15_transformer_tree_equals_real_checkpoint() {
    let (config, tensors) = read_manifest(&golden("manifests").join("hv15-480p-t2v-transformer.json")).unwrap();
    let cfg: Config = serde_json::from_value(config).unwrap();
    assert_eq!(cfg, Config::default(), "the released config is diffusers' default (glyph hidden 2048)");
    let rec = RecordingBackend::new();
    HunyuanVideo15Transformer3DModel::new(&cfg, rec.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let requested = rec.requested();
    let missing: Vec<_> = tensors.keys().filter(|k| !requested.contains_key(*k)).collect();
    let extra: Vec<_> = requested.keys().filter(|k| !tensors.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "never asked for {missing:?}; asked for unknown {extra:?}");
    for (name, shape) in &tensors {
        assert_eq!(&requested[name], shape, "shape of {name}");
    }
    let params: usize = tensors.values().map(|s| s.iter().product::<usize>()).sum();
    println!(
        "hv15-480p-t2v-transformer.json: {} tensors, {params} parameters, all names and shapes equal",
        tensors.len()
    );
}
