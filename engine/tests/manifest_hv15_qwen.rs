//! The Qwen2.5-VL text model's module tree asks for exactly the tensors (names and shapes) of the
//! real Qwen2.5-VL-7B language model (`tests/fixtures/golden/manifests/hv15-qwen2.5-vl-7b-text.json`),
//! on a recording backend (no memory for the 7B parameters).

mod common;

use candle_core::{DType, Device};
use common::golden;
use tessera_engine::models::qwen25vl_text::{Config, Qwen25VlTextModel};
use tessera_engine::weights::{read_manifest, RecordingBackend};

#[test]
fn qwen_text_tree_equals_real_checkpoint() {
    let (config, tensors) = read_manifest(&golden("manifests").join("hv15-qwen2.5-vl-7b-text.json")).unwrap();
    let cfg: Config = serde_json::from_value(config).unwrap();
    assert_eq!((cfg.num_hidden_layers, cfg.head_dim(), cfg.theta()), (28, 128, 1e6));
    let rec = RecordingBackend::new();
    Qwen25VlTextModel::new(&cfg, rec.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let requested = rec.requested();
    let missing: Vec<_> = tensors.keys().filter(|k| !requested.contains_key(*k)).collect();
    let extra: Vec<_> = requested.keys().filter(|k| !tensors.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "never asked for {missing:?}; asked for unknown {extra:?}");
    for (name, shape) in &tensors {
        assert_eq!(&requested[name], shape, "shape of {name}");
    }
    let params: usize = tensors.values().map(|s| s.iter().product::<usize>()).sum();
    println!(
        "hv15-qwen2.5-vl-7b-text.json: {} tensors, {params} parameters, all names and shapes equal",
        tensors.len()
    );
}
