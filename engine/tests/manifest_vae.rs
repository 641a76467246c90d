//! The VAE module tree asks for exactly the tensors (names and shapes) of the real Wan2.1 and
//! Wan2.2 VAE checkpoints, as listed in `tests/fixtures/golden/manifests/`. Built on a recording
//! backend with zero-stride tensors, so the real-size model costs no memory.

mod common;

use candle_core::{DType, Device};
use common::golden;
use tessera_engine::models::wan::vae::{AutoencoderKLWan, Config, VaeParts};
use tessera_engine::weights::{read_manifest, RecordingBackend};

fn check(manifest: &str, preset: Config) {
    let (config, tensors) = read_manifest(&golden("manifests").join(manifest)).unwrap();
    let cfg: Config = serde_json::from_value(config).unwrap();
    let cfg = Config { latents_mean: preset.latents_mean.clone(), latents_std: preset.latents_std.clone(), ..cfg };
    // The manifests carry the architecture; their latents_mean/std are placeholders, so compare the rest.
    let arch = |c: &Config| Config { latents_mean: vec![], latents_std: vec![], ..c.clone() };
    assert_eq!(arch(&cfg), arch(&preset), "{manifest}: the named preset must equal the real architecture");
    let rec = RecordingBackend::new();
    AutoencoderKLWan::new(&cfg, VaeParts::Both, rec.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let requested = rec.requested();
    let missing: Vec<_> = tensors.keys().filter(|k| !requested.contains_key(*k)).collect();
    let extra: Vec<_> = requested.keys().filter(|k| !tensors.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{manifest}: never asked for {missing:?}; asked for unknown {extra:?}"
    );
    for (name, shape) in &tensors {
        assert_eq!(&requested[name], shape, "{manifest}: shape of {name}");
    }
    let params: usize = tensors.values().map(|s| s.iter().product::<usize>()).sum();
    println!("{manifest}: {} tensors, {params} parameters, all names and shapes equal", tensors.len());
}

#[test]
fn wan21_vae_tree_equals_real_checkpoint() {
    check("wan2.1-vae.json", Config::wan21());
}

#[test]
fn wan22_vae_tree_equals_real_checkpoint() {
    check("wan2.2-vae.json", Config::wan22());
}
