//! Single-file checkpoints through the one model reader (`ModelSpec::open`), against the golden
//! case `single_file` (one tiny TI2V-style transformer and one tiny Wan2.1 VAE, stored as diffusers
//! folders and as the files creators download; written and checked with diffusers'
//! `from_single_file`, see its case.json):
//!
//! - every f32 / bf16 file loads to exactly the tensors of the diffusers folder (bitwise, all names);
//! - forwards against diffusers: `out` (Wan-native and ComfyUI-prefixed f32), `out_bf16`,
//!   `out_fp8_scaled` (ComfyUI/Kijai fp8 with per-tensor `scale_weight`), also with FSDP 2;
//! - the Wan-native Wan2.1 VAE file equals its diffusers folder;
//! - the configs shapes imply for the real checkpoints (manifests), and the one-line refusals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use tessera_engine::model_spec::single_file::{self, Shapes};
use tessera_engine::model_spec::{Layout, ModelFiles, ModelSpec, Variant};
use tessera_engine::models::wan::transformer::{ShardOptions, ShardedTransformer, WanTransformer3DModel};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::tensor_io::read_tensor;
use tessera_engine::weights::Checkpoint;

const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/single_file");
/// A pipeline folder whose transformer config has the dimensions of the single-file case and whose
/// VAE (z 8) fits its transformer: the configs the tiny files need (`--config`).
const PIPELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/lora/pipeline_ti2v");
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/manifests");

/// f32 CPU vs torch f32 CPU on the same weight values (the fp8 and bf16 references were computed
/// in f32 from the dequantised / upcast values, so storage rounding is in the reference too): only
/// summation order differs, ~1e-6 relative; 1e-4 is the project-wide f32 budget.
const REL_TOL: f64 = 1e-4;

fn case(name: &str) -> PathBuf {
    Path::new(CASE).join(name)
}

fn errors(out: &Tensor, reference: &Tensor) -> Result<(f64, f64)> {
    let diff = (out.to_dtype(DType::F64)? - reference.to_dtype(DType::F64)?)?;
    let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    Ok((max_abs, norm(&diff)? / norm(&reference.to_dtype(DType::F64)?)?))
}

fn io(file: &str, name: &str) -> Result<Tensor> {
    Ok(read_tensor(&case(file), name, DType::F32, &Device::Cpu)?)
}

/// The model as `--transformer FILE --vae <pipeline_ti2v's VAE file> --config <pipeline_ti2v>`.
fn spec(transformer: &str) -> Result<ModelSpec> {
    let files = ModelFiles {
        transformer: Some(case(transformer)),
        vae: Some(Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors")),
        config: Some(PIPELINE.into()),
        ..ModelFiles::default()
    };
    Ok(ModelSpec::open(Path::new(""), &files)?)
}

/// The diffusers folder's tensors by name.
fn folder_tensors(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let ckpt = Checkpoint::open(dir)?;
    let mut out = BTreeMap::new();
    for f in &ckpt.files {
        for (name, t) in candle_core::safetensors::load(f, &Device::Cpu)? {
            out.insert(name, t);
        }
    }
    Ok(out)
}

fn bitwise_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(a.dims() == b.dims() && a.flatten_all()?.to_vec1::<f32>()? == b.flatten_all()?.to_vec1::<f32>()?)
}

#[test]
fn f32_and_bf16_files_load_to_the_folder_tensors_bitwise() -> Result<()> {
    let want = folder_tensors(&case("transformer"))?;
    for (file, bf16) in [
        ("wan_transformer.safetensors", false),
        ("comfy_transformer.safetensors", false),
        ("bf16_transformer.safetensors", true),
    ] {
        let spec = spec(file)?;
        assert_eq!(spec.layout, Layout::Files);
        let weights = spec.transformer_weights(0)?;
        let table = weights.table()?;
        let names: Vec<&String> = table.iter().map(|(n, _)| n).collect();
        assert_eq!(names, want.keys().collect::<Vec<_>>(), "{file}: the same tensor names as the folder");
        let vb = weights.var_builder(DType::F32, &Device::Cpu)?;
        for (name, w) in &want {
            let w = if bf16 { w.to_dtype(DType::BF16)?.to_dtype(DType::F32)? } else { w.clone() };
            let got = vb.get_unchecked(name)?;
            assert!(bitwise_equal(&got, &w)?, "{file}: {name} differs from the diffusers folder");
        }
        println!("{file}: all {} tensors bitwise equal to transformer/ ({})", want.len(), spec.weights.unwrap().dtype);
    }
    Ok(())
}

fn forward(model: &WanTransformer3DModel) -> Result<Tensor> {
    Ok(model.forward(
        &io("inputs.safetensors", "latents")?,
        &io("inputs.safetensors", "timestep")?,
        &io("inputs.safetensors", "context")?,
    )?)
}

#[test]
fn forwards_match_diffusers_for_every_storage() -> Result<()> {
    let cases = [
        ("wan_transformer.safetensors", "out"),
        ("comfy_transformer.safetensors", "out"),
        ("bf16_transformer.safetensors", "out_bf16"),
        ("fp8_scaled_transformer.safetensors", "out_fp8_scaled"),
    ];
    let out_f32 = io("outputs.safetensors", "out")?;
    for (file, reference) in cases {
        let spec = spec(file)?;
        let vb = spec.transformer_weights(0)?.var_builder(DType::F32, &Device::Cpu)?;
        let out = forward(&WanTransformer3DModel::new(&spec.transformer, vb)?)?;
        let (max_abs, rel) = errors(&out, &io("outputs.safetensors", reference)?)?;
        let (_, storage) = errors(&out, &out_f32)?;
        println!(
            "{file} ({}): vs {reference} max-abs {max_abs:.3e}, rel {rel:.3e}; vs the f32 model rel {storage:.3e} (what the storage costs)",
            spec.weights.as_ref().unwrap().dtype
        );
        assert!(rel <= REL_TOL, "{file}: relative error {rel:.3e} > {REL_TOL:.0e}");
    }
    Ok(())
}

/// FSDP 2 reads each rank's slice of the fp8 weights by byte range and dequantises just that slice:
/// the gathered blocks equal the single-device load, so the output does too.
#[test]
fn fp8_scaled_under_fsdp_equals_one_device() -> Result<()> {
    let spec = spec("fp8_scaled_transformer.safetensors")?;
    let weights = spec.transformer_weights(0)?;
    let one = forward(&WanTransformer3DModel::new(&spec.transformer, weights.var_builder(DType::F32, &Device::Cpu)?)?)?;
    let comms = ThreadComm::world(2, Duration::from_secs(30));
    let outs: Vec<Tensor> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (spec, weights) = (&spec, &weights);
                s.spawn(move || -> Result<Tensor> {
                    let fsdp: Arc<dyn Collective> = Arc::new(comm);
                    let opts = ShardOptions { fsdp: Some(fsdp), ..Default::default() };
                    let model = ShardedTransformer::load(&spec.transformer, weights, DType::F32, &Device::Cpu, opts)?;
                    Ok(model.forward(
                        &io("inputs.safetensors", "latents")?,
                        &io("inputs.safetensors", "timestep")?,
                        &io("inputs.safetensors", "context")?,
                    )?)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Result<Vec<_>>>()
    })?;
    for (r, out) in outs.iter().enumerate() {
        let (max_abs, rel) = errors(out, &one)?;
        println!("fp8 scaled, FSDP 2 rank {r}: vs one device max-abs {max_abs:.3e}, rel {rel:.3e}");
        // The gathered weights are the same f32 values; only the matmul blocking may differ.
        assert!(rel <= 1e-6, "rank {r}: {rel:.3e}");
    }
    Ok(())
}

#[test]
fn wan_native_vae_file_loads_to_the_folder_tensors() -> Result<()> {
    let want = folder_tensors(&case("vae"))?;
    let (cfg, weights) = tessera_engine::model_spec::vae_component(&case("wan_vae.safetensors"), Some(&case("vae")))?;
    assert_eq!(cfg.z_dim, 4);
    let table = weights.table()?;
    assert_eq!(table.iter().map(|(n, _)| n).collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let vb = weights.var_builder(DType::F32, &Device::Cpu)?;
    for (name, w) in &want {
        assert!(bitwise_equal(&vb.get_unchecked(name)?, w)?, "{name}");
    }
    println!("wan_vae.safetensors: all {} tensors bitwise equal to vae/", want.len());
    Ok(())
}

fn manifest_shapes(name: &str) -> Result<Shapes> {
    let (_, tensors) = tessera_engine::weights::read_manifest(&Path::new(MANIFESTS).join(name))?;
    Ok(tensors)
}

/// The real checkpoints' tensor shapes (manifests) settle their configs: widths, layers, channels
/// and, with head dim 128, heads.
#[test]
fn shapes_of_the_real_checkpoints_give_their_configs() -> Result<()> {
    let mut found = 0;
    for entry in std::fs::read_dir(MANIFESTS)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // The Wan transformers' manifests (the folder also holds other families', e.g. hv15-*).
        if !(name.starts_with("wan") && name.contains("transformer")) {
            continue;
        }
        let (config, _) = tessera_engine::weights::read_manifest(&path)?;
        let want: tessera_engine::models::wan::transformer::Config = serde_json::from_value(config)?;
        let got = single_file::infer_transformer(&manifest_shapes(&name)?, &path)?;
        assert_eq!(
            (got.num_attention_heads, got.attention_head_dim, got.num_layers, got.in_channels, got.ffn_dim),
            (want.num_attention_heads, want.attention_head_dim, want.num_layers, want.in_channels, want.ffn_dim),
            "{name}"
        );
        assert_eq!(
            (got.text_dim, got.freq_dim, got.out_channels, got.cross_attn_norm),
            (want.text_dim, want.freq_dim, want.out_channels, want.cross_attn_norm),
            "{name}"
        );
        println!(
            "{name}: {} heads × {}, {} layers, in {}",
            got.num_attention_heads, got.attention_head_dim, got.num_layers, got.in_channels
        );
        found += 1;
    }
    assert!(found >= 3, "expected the TI2V-5B and A14B manifests");
    Ok(())
}

/// Without `--config` and without a model index, what shapes cannot tell comes from the published
/// configs and is listed for the user.
#[test]
fn published_settings_are_assumed_and_said() -> Result<()> {
    let files = ModelFiles {
        transformer: Some(case("wan_transformer.safetensors")),
        vae: Some(Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors")),
        config: Some(Path::new(PIPELINE).join("transformer/config.json")),
        ..ModelFiles::default()
    };
    // The VAE file has no published z dim (8): its config is needed too.
    let err = ModelSpec::open(Path::new(""), &files).unwrap_err().to_string();
    assert!(err.contains("«config»"), "{err}");
    // A folder of single files with the configs beside: the VAE's config from the folder.
    let dir = tempfile::tempdir()?;
    std::fs::copy(case("comfy_transformer.safetensors"), dir.path().join("wan2.2_ti2v_5B_fp16.safetensors"))?;
    std::fs::create_dir(dir.path().join("vae"))?;
    std::fs::copy(Path::new(PIPELINE).join("vae/config.json"), dir.path().join("vae/config.json"))?;
    std::fs::create_dir(dir.path().join("transformer"))?;
    std::fs::copy(Path::new(PIPELINE).join("transformer/config.json"), dir.path().join("transformer/config.json"))?;
    std::fs::copy(
        Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors"),
        dir.path().join("vae.safetensors"),
    )?;
    let spec = ModelSpec::open(dir.path(), &ModelFiles { config: Some(dir.path().into()), ..ModelFiles::default() })?;
    assert_eq!((spec.layout, spec.variant), (Layout::Files, Variant::Wan22Ti2v5b));
    println!("assumed: {:?}", spec.assumed);
    assert!(spec.assumed.iter().any(|a| a.contains("flow_shift 5")), "{:?}", spec.assumed);
    assert_eq!(spec.scheduler_config["flow_shift"], 5.0);
    Ok(())
}

fn write_raw(path: &Path, header: &str, data: usize) -> Result<()> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data));
    std::fs::write(path, bytes)?;
    Ok(())
}

#[test]
fn unreadable_files_are_refused_in_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let one_line = |e: String| {
        assert!(!e.contains('\n'), "{e}");
        e
    };
    // e5m2 weights.
    let e5m2 = dir.path().join("e5m2.safetensors");
    write_raw(
        &e5m2,
        r#"{"time_embedding.0.weight":{"dtype":"F8_E5M2","shape":[2,2],"data_offsets":[0,4]},"patch_embedding.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        8,
    )?;
    let files = ModelFiles { transformer: Some(e5m2), vae: Some(case("wan_vae.safetensors")), ..ModelFiles::default() };
    let err = one_line(ModelSpec::open(Path::new(""), &files).unwrap_err().to_string());
    assert!(err.contains("F8_E5M2") && err.contains("time_embedding.0.weight"), "{err}");
    // Heads that shapes cannot tell (width 48 with no config).
    let files = ModelFiles {
        transformer: Some(case("wan_transformer.safetensors")),
        vae: Some(case("wan_vae.safetensors")),
        ..ModelFiles::default()
    };
    let err = one_line(ModelSpec::open(Path::new(""), &files).unwrap_err().to_string());
    assert!(err.contains("«config»") && err.contains("128"), "{err}");
    // A Wan2.2 VAE in native names whose latent channels are not the published 48.
    let vae22 = dir.path().join("wan2.2_vae.safetensors");
    write_raw(
        &vae22,
        r#"{"decoder.middle.0.residual.0.gamma":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"decoder.upsamples.0.upsamples.0.residual.0.gamma":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        8,
    )?;
    let err = one_line(tessera_engine::model_spec::vae_component(&vae22, None).unwrap_err().to_string());
    assert!(err.contains("Wan2.2 VAE's 48") && err.contains("«config»"), "{err}");
    // A VAE given as the transformer.
    let files = ModelFiles { transformer: Some(case("wan_vae.safetensors")), ..ModelFiles::default() };
    let err = one_line(ModelSpec::open(Path::new(""), &files).unwrap_err().to_string());
    assert!(err.contains("is not a Wan transformer"), "{err}");
    // A config that does not describe the file.
    let files = ModelFiles {
        transformer: Some(case("wan_transformer.safetensors")),
        vae: Some(Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors")),
        config: Some(Path::new(CASE).join("../lora/pipeline_a14b")),
        ..ModelFiles::default()
    };
    let err = one_line(ModelSpec::open(Path::new(""), &files).unwrap_err().to_string());
    assert!(err.contains("does not describe") || err.contains("in the file"), "{err}");
    Ok(())
}
