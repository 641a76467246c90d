//! The HunyuanVideo 1.5 VAE module tree asks for exactly the tensors (names and shapes) of the real
//! checkpoint (`tests/fixtures/golden/manifests/hv15-vae.json`, from the published config). Built on
//! a recording backend with zero-stride tensors, so the real-size model costs no memory.

mod common;

use candle_core::{DType, Device};
use common::golden;
use tessera_engine::models::hv15::vae::{AutoencoderKLHunyuanVideo15, Config};
use tessera_engine::models::wan::vae::VaeParts;
use tessera_engine::weights::{read_manifest, RecordingBackend};

#[test]
fn hv15_vae_tree_equals_real_checkpoint() {
    let (config, tensors) = read_manifest(&golden("manifests").join("hv15-vae.json")).unwrap();
    let cfg: Config = serde_json::from_value(config).unwrap();
    assert_eq!(cfg, Config::default(), "the real config is diffusers' default");
    let rec = RecordingBackend::new();
    AutoencoderKLHunyuanVideo15::new(&cfg, VaeParts::Both, rec.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let requested = rec.requested();
    let missing: Vec<_> = tensors.keys().filter(|k| !requested.contains_key(*k)).collect();
    let extra: Vec<_> = requested.keys().filter(|k| !tensors.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "never asked for {missing:?}; asked for unknown {extra:?}");
    for (name, shape) in &tensors {
        assert_eq!(&requested[name], shape, "shape of {name}");
    }
    let params: usize = tensors.values().map(|s| s.iter().product::<usize>()).sum();
    println!("hv15-vae.json: {} tensors, {params} parameters, all names and shapes equal", tensors.len());
}
