//! The UMT5 text encoder as ComfyUI's single files (`umt5_xxl_fp16.safetensors`,
//! `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: transformers names, `shared.weight` only, no config)
//! through the one model reader (`model_spec::TextModel`, `--text-encoder FILE --tokenizer FILE`):
//!
//! - the config the shapes imply equals the golden encoder's `config.json`;
//! - prompt embeddings vs diffusers' `WanPipeline._get_t5_prompt_embeds` run on the file's own values
//!   (`scripts/gen_umt5_single_file.py`), on one device and split by layer over 2 ranks;
//! - `ModelSpec::open` finds the encoder and tokenizer from flags and in a ComfyUI `models/` folder;
//!   the one-line refusals.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use tessera_engine::model_spec::{ModelFiles, ModelSpec, TextModel};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::tensor_io;
use tessera_engine::text::sharded::ShardedTextEncoder;
use tessera_engine::text::{TextEncoder, TextEncoderOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
/// f32 on both sides from the same (f16-rounded or fp8 × scale) values: only summation order
/// differs (~1e-7 measured on the folder case); 1e-5 leaves room for the GELU tanh and RMS norm.
const TOL: f64 = 1e-5;

fn case(name: &str) -> PathBuf {
    Path::new(FIXTURES).join("umt5_single_file").join(name)
}

fn tokenizer() -> PathBuf {
    Path::new(FIXTURES).join("golden/prompt/tokenizer")
}

fn text_model(file: &str) -> TextModel {
    TextModel { encoder: case(file), tokenizer: tokenizer() }
}

fn prompts() -> Result<(Vec<String>, usize)> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case("case.json"))?)?;
    let prompts = json["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    Ok((prompts, json["max_sequence_length"].as_u64().unwrap() as usize))
}

fn errors(got: &Tensor, want: &Tensor) -> Result<(f64, f64)> {
    let diff = (got.to_dtype(DType::F64)? - want.to_dtype(DType::F64)?)?;
    let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    Ok((max_abs, norm(&diff)? / norm(&want.to_dtype(DType::F64)?)?))
}

const FILES: [(&str, &str); 2] =
    [("umt5_xxl_fp16.safetensors", "fp16"), ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "fp8")];

#[test]
fn shapes_give_the_golden_config() -> Result<()> {
    let want: tessera_engine::models::umt5::Config = serde_json::from_str(&std::fs::read_to_string(
        Path::new(FIXTURES).join("golden/prompt/text_encoder/config.json"),
    )?)?;
    for (file, _) in FILES {
        let got = text_model(file).config()?;
        assert_eq!(got, want, "{file}");
    }
    Ok(())
}

#[test]
fn single_files_encode_as_diffusers() -> Result<()> {
    let (prompts, max_len) = prompts()?;
    let outputs = tensor_io::read_all(&case("outputs.safetensors"), &Device::Cpu)?;
    let opts = TextEncoderOptions { device: Device::Cpu, dtype: Some(DType::F32), max_sequence_length: max_len };
    for (file, tag) in FILES {
        let encoder = TextEncoder::load(&text_model(file), &opts)?;
        for (i, p) in prompts.iter().enumerate() {
            let (max_abs, rel) = errors(&encoder.encode(p)?, &outputs[&format!("prompt_embeds_{tag}_{i}")])?;
            println!("{file} prompt {i}: max-abs {max_abs:.3e}, rel {rel:.3e}");
            assert!(rel <= TOL, "{file} prompt {i}: {rel:.3e}");
        }
    }
    Ok(())
}

/// Split by layer over 2 ranks (threads), each reading only its layers of the fp8 file.
#[test]
fn fp8_file_sharded_over_two_ranks_equals_one_device() -> Result<()> {
    let (prompts, max_len) = prompts()?;
    let opts = TextEncoderOptions { device: Device::Cpu, dtype: Some(DType::F32), max_sequence_length: max_len };
    let model = text_model("umt5_xxl_fp8_e4m3fn_scaled.safetensors");
    let want = TextEncoder::load(&model, &opts)?.encode(&prompts[0])?;
    let outs: Vec<Tensor> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadComm::world(2, Duration::from_secs(30))
            .into_iter()
            .map(|comm| {
                let (model, opts, prompt) = (&model, &opts, &prompts[0]);
                s.spawn(move || -> Result<Tensor> {
                    let comm: Arc<dyn Collective> = Arc::new(comm);
                    Ok(ShardedTextEncoder::load(model, opts, comm)?.encode(prompt)?)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Result<Vec<_>>>()
    })?;
    for (rank, out) in outs.iter().enumerate() {
        let (max_abs, rel) = errors(out, &want)?;
        println!("fp8 UMT5 sharded, rank {rank}: vs one device max-abs {max_abs:.3e}, rel {rel:.3e}");
        assert!(rel <= 1e-6, "rank {rank}: {rel:.3e}");
    }
    Ok(())
}

const PIPELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/lora/pipeline_ti2v");

#[test]
fn model_spec_finds_text_encoder_files() -> Result<()> {
    // From flags, beside transformer and VAE files.
    let files = ModelFiles {
        transformer: Some(Path::new(FIXTURES).join("golden/single_file/wan_transformer.safetensors")),
        vae: Some(Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors")),
        config: Some(PIPELINE.into()),
        text_encoder: Some(case("umt5_xxl_fp8_e4m3fn_scaled.safetensors")),
        tokenizer: Some(tokenizer().join("tokenizer.json")),
        ..ModelFiles::default()
    };
    let spec = ModelSpec::open(Path::new(""), &files)?;
    assert!(spec.can_encode_text());
    assert_eq!(spec.text_encoder.as_ref().map(|c| (c.num_layers, c.num_heads, c.d_kv)), Some((2, 4, 8)));
    assert!(spec.assumed.iter().any(|a| a.contains("relative_attention_max_distance 128")), "{:?}", spec.assumed);
    // A ComfyUI `models/` folder: diffusion_models/, vae/, text_encoders/ (+ the tokenizer there).
    let dir = tempfile::tempdir()?;
    for sub in ["diffusion_models", "vae", "text_encoders"] {
        std::fs::create_dir(dir.path().join(sub))?;
    }
    std::fs::copy(
        Path::new(FIXTURES).join("golden/single_file/comfy_transformer.safetensors"),
        dir.path().join("diffusion_models/wan2.2_ti2v_5B_fp16.safetensors"),
    )?;
    std::fs::copy(
        Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors"),
        dir.path().join("vae/wan2.2_vae.safetensors"),
    )?;
    std::fs::copy(case("umt5_xxl_fp16.safetensors"), dir.path().join("text_encoders/umt5_xxl_fp16.safetensors"))?;
    std::fs::copy(tokenizer().join("tokenizer.json"), dir.path().join("text_encoders/tokenizer.json"))?;
    let spec = ModelSpec::open(dir.path(), &ModelFiles { config: Some(PIPELINE.into()), ..ModelFiles::default() })?;
    let text = spec.text_model().expect("the folder's text encoder and tokenizer");
    assert_eq!(text.encoder, dir.path().join("text_encoders/umt5_xxl_fp16.safetensors"));
    assert_eq!(text.tokenizer, dir.path().join("text_encoders/tokenizer.json"));
    println!("ComfyUI models/ folder: {}", text.describe());
    Ok(())
}

#[test]
fn wrong_text_files_are_refused_in_one_line() -> Result<()> {
    let base = || ModelFiles {
        transformer: Some(Path::new(FIXTURES).join("golden/single_file/wan_transformer.safetensors")),
        vae: Some(Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors")),
        config: Some(PIPELINE.into()),
        ..ModelFiles::default()
    };
    // A VAE given as the text encoder.
    let files = ModelFiles {
        text_encoder: Some(Path::new(PIPELINE).join("vae/diffusion_pytorch_model.safetensors")),
        ..base()
    };
    let err = ModelSpec::open(Path::new(""), &files).unwrap_err().to_string();
    assert!(!err.contains('\n') && err.contains("is not a UMT5 text encoder"), "{err}");
    // A tokenizer that does not exist.
    let files = ModelFiles { tokenizer: Some("/nonexistent/tokenizer.json".into()), ..base() };
    let err = ModelSpec::open(Path::new(""), &files).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
    // The encoder without a tokenizer cannot encode text (the request says so before any work).
    let files = ModelFiles { text_encoder: Some(case("umt5_xxl_fp16.safetensors")), ..base() };
    assert!(!ModelSpec::open(Path::new(""), &files)?.can_encode_text());
    Ok(())
}
