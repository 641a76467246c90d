//! The Wan2.2 VAE in Wan-native names (`wan2.2_vae.safetensors`: the official Wan2.2 release and
//! ComfyUI's file) through the one key table (`models/wan/checkpoint_keys.rs`), against diffusers'
//! own converter `convert_vae_22` (`scripts/gen_vae22_native.py` wrote the fixtures and checked
//! both with it):
//!
//! - `tests/fixtures/vae22_native/wan2.2_vae.safetensors` is the sweep case `vae/v22_b4_z6_res2`
//!   (bf16, residual levels with 2 resnets as published) in Wan-native names: it loads to exactly
//!   that diffusers folder's tensors, and decodes and encodes to the sweep's diffusers references;
//! - `published_names.json`: every tensor name of the published Wan2.2 VAE maps to its diffusers
//!   name (the manifest's), and the file is detected as a Wan2.2 VAE with the published config.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use tessera_engine::model_spec::single_file::{self, FileKind};
use tessera_engine::models::wan::checkpoint_keys::{self, KeyDialect, VaeKeys};
use tessera_engine::models::wan::vae::{self, VaeParts};
use tessera_engine::tensor_io::read_tensor;
use tessera_engine::weights::Checkpoint;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// f32 on both sides from the same bf16 weights; the direct conv sums taps in another order than
/// oneDNN (1e-7..1e-6 measured on these sizes, as in sweep_vae.rs): 1e-5 relative.
const TOL: f64 = 1e-5;

fn native_file() -> PathBuf {
    Path::new(FIXTURES).join("vae22_native/wan2.2_vae.safetensors")
}

fn sweep_case() -> PathBuf {
    Path::new(FIXTURES).join("sweep/vae/v22_b4_z6_res2")
}

fn io(file: &str, name: &str) -> Result<Tensor> {
    Ok(read_tensor(&sweep_case().join(file), name, DType::F32, &Device::Cpu)?)
}

#[test]
fn native_file_loads_to_the_diffusers_tensors_bitwise() -> Result<()> {
    assert_eq!(single_file::classify(&native_file())?, FileKind::Vae(VaeKeys::Wan22Native));
    let (cfg, weights) = tessera_engine::model_spec::vae_component(&native_file(), Some(&sweep_case().join("vae")))?;
    assert!(cfg.is_residual && cfg.num_res_blocks == 2);
    let mut want = BTreeMap::new();
    for f in Checkpoint::open(&sweep_case().join("vae"))?.files {
        want.extend(candle_core::safetensors::load(f, &Device::Cpu)?);
    }
    let table = weights.table()?;
    assert_eq!(table.iter().map(|(n, _)| n).collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let vb = weights.var_builder(DType::F32, &Device::Cpu)?;
    for (name, w) in &want {
        let got = vb.get_unchecked(name)?.flatten_all()?.to_vec1::<f32>()?;
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(got == w, "{name} differs from the diffusers folder");
    }
    println!("wan2.2_vae.safetensors: all {} tensors bitwise equal to the diffusers folder", want.len());
    Ok(())
}

#[test]
fn native_file_decodes_and_encodes_as_diffusers() -> Result<()> {
    let (cfg, weights) = tessera_engine::model_spec::vae_component(&native_file(), Some(&sweep_case().join("vae")))?;
    let model = vae::load_weights(&cfg, &weights, VaeParts::Both, DType::F32, &Device::Cpu)?;
    let decoded = model.decode(&io("inputs.safetensors", "latents")?, None, &mut |_| {})?;
    common::assert_close("native Wan2.2 VAE decode", &decoded, &io("outputs.safetensors", "decoded")?, TOL);
    let moments = model.encode(&io("inputs.safetensors", "video")?, None, &mut |_| {})?;
    common::assert_close("native Wan2.2 VAE encode mean", &moments.mean, &io("outputs.safetensors", "enc_mean")?, TOL);
    common::assert_close(
        "native Wan2.2 VAE encode logvar",
        &moments.logvar,
        &io("outputs.safetensors", "enc_logvar")?,
        TOL,
    );
    Ok(())
}

/// The published Wan2.2 VAE's real names: the key table gives diffusers' names for all of them
/// (exactly the manifest's tensors), and detection says Wan2.2.
#[test]
fn published_wan22_vae_names_map_to_the_manifest() -> Result<()> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURES).join("vae22_native/published_names.json"))?)?;
    let names: BTreeMap<String, String> = serde_json::from_value(json["names"].clone())?;
    let (_, manifest) =
        tessera_engine::weights::read_manifest(&Path::new(FIXTURES).join("golden/manifests/wan2.2-vae.json"))?;
    let rename = checkpoint_keys::vae_rename(&KeyDialect::WanNative { prefix: String::new() }, 2);
    let mut mapped = Vec::new();
    for (native, want) in &names {
        let got = rename(native).unwrap_or_default();
        assert_eq!(&got, want, "{native}");
        mapped.push(got);
    }
    mapped.sort();
    assert_eq!(mapped, manifest.keys().cloned().collect::<Vec<_>>(), "exactly the manifest's tensors");
    assert_eq!(checkpoint_keys::detect_vae(names.keys().map(String::as_str)), Some(VaeKeys::Wan22Native));
    // Wan2.1's published names stay Wan2.1 (and keep their flat decoder numbering).
    assert_eq!(
        checkpoint_keys::detect_vae(
            ["decoder.middle.0.residual.0.gamma", "decoder.upsamples.3.resample.1.weight"].into_iter()
        ),
        Some(VaeKeys::Wan21Native)
    );
    println!("{} published Wan2.2 VAE names map to the manifest's diffusers names", names.len());
    Ok(())
}
