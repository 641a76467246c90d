//! UMT5 encoder: parity of `last_hidden_state` with transformers 5.23 on the golden tiny model
//! (`tests/fixtures/golden/umt5`), and the real UMT5-XXL tensor names/shapes against its manifest.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tessera_engine::models::umt5::{AttentionInputs, Config, UMT5EncoderModel, UMT5Layers};
use tessera_engine::tensor_io;
use tessera_engine::weights::{self, Checkpoint, RecordingBackend};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden");

/// Max-abs and relative (‖a−b‖/‖b‖) error.
fn errors(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let diff = (ours - reference).expect("same shape");
    let max_abs = diff.abs().and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>());
    let norm = |t: &Tensor| t.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("norm").sqrt();
    (max_abs.expect("max"), norm(&diff) / norm(reference))
}

fn load_golden_model() -> UMT5EncoderModel {
    let dir = Path::new(GOLDEN).join("umt5/text_encoder");
    let cfg: Config = weights::load_config(&dir).expect("config");
    let vb = Checkpoint::open(&dir).expect("checkpoint").var_builder(DType::F32, &Device::Cpu).expect("vb");
    UMT5EncoderModel::new(&cfg, vb).expect("model")
}

#[test]
fn hidden_states_match_transformers() {
    // Seed 0 (12 tokens) and seed 1 (9 tokens, other weights).
    for golden in [GOLDEN, concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden-seed1")] {
        check_hidden(golden);
    }
}

fn check_hidden(golden: &str) {
    let dir = Path::new(golden).join("umt5/text_encoder");
    let cfg: Config = weights::load_config(&dir).expect("config");
    let vb = Checkpoint::open(&dir).expect("checkpoint").var_builder(DType::F32, &Device::Cpu).expect("vb");
    let model = UMT5EncoderModel::new(&cfg, vb).expect("model");
    let case = Path::new(golden).join("umt5");
    let mut inputs = tensor_io::read_all(&case.join("inputs.safetensors"), &Device::Cpu).expect("inputs");
    let ids = inputs.remove("input_ids").expect("input_ids").to_dtype(DType::U32).expect("ids");
    let mask = inputs.remove("attention_mask").expect("attention_mask");
    let reference =
        tensor_io::read_tensor(&case.join("outputs.safetensors"), "hidden", DType::F32, &Device::Cpu).expect("hidden");

    let hidden = model.forward(&ids, Some(&mask)).expect("forward");
    let (max_abs, rel) = errors(&hidden, &reference);
    println!("{golden}: umt5 hidden (with mask): max-abs {max_abs:e}, relative {rel:e}");
    // f32 on both sides; only summation order differs (a few ulps per layer): 1e-4 relative is the
    // project's f32 budget, and a wrong bias/bucket/norm shows up as O(1).
    assert!(rel <= 1e-4, "relative error {rel} (max-abs {max_abs})");

    let hidden = model.forward(&ids, None).expect("forward without mask");
    let (max_abs, rel) = errors(&hidden, &reference);
    println!("{golden}: umt5 hidden (no mask): max-abs {max_abs:e}, relative {rel:e}");
    assert!(rel <= 1e-4, "relative error {rel} (max-abs {max_abs})");
}

#[test]
fn masked_padding_leaves_real_rows_unchanged() {
    // Padding keys are masked with finfo.min, so the rows of the real tokens must not depend on
    // what the padding holds: the shortcut `TextEncoder::encode` relies on.
    let model = load_golden_model();
    let ids = Tensor::new(&[[17u32, 42, 99, 5, 1]], &Device::Cpu).expect("ids");
    let short = model.forward(&ids, None).expect("short");
    let padded_ids = Tensor::new(&[[17u32, 42, 99, 5, 1, 0, 0, 0, 0, 0, 0, 0]], &Device::Cpu).expect("ids");
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0.]], &Device::Cpu).expect("mask");
    let padded = model.forward(&padded_ids, Some(&mask)).expect("padded").narrow(1, 0, 5).expect("narrow");
    let (max_abs, rel) = errors(&padded, &short);
    println!("padded vs unpadded real rows: max-abs {max_abs:e}, relative {rel:e}");
    assert!(rel <= 1e-6, "relative error {rel}");
}

#[test]
fn out_of_vocabulary_ids_are_rejected() {
    let model = load_golden_model();
    let ids = Tensor::new(&[[3u32, 300]], &Device::Cpu).expect("ids");
    let err = model.forward(&ids, None).expect_err("id 300 is outside a 300-token vocabulary").to_string();
    assert!(err.contains("vocabulary"), "{err}");
}

#[test]
fn umt5_xxl_tensor_names_and_shapes_match_the_real_checkpoint() {
    let manifest = Path::new(GOLDEN).join("manifests/umt5-xxl-encoder.json");
    let (config, tensors) = weights::read_manifest(&manifest).expect("manifest");
    let cfg: Config = serde_json::from_value(config).expect("UMT5Config keys");
    assert_eq!((cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff, cfg.vocab_size), (4096, 24, 64, 10240, 256384));

    let recorder = RecordingBackend::new();
    UMT5EncoderModel::new(&cfg, recorder.var_builder(DType::BF16, &Device::Cpu)).expect("build with the real config");
    let requested = recorder.requested();

    // The checkpoint stores the tied embedding under both names; the model asks for one of them.
    let mut expected = tensors.clone();
    assert!(expected.remove("encoder.embed_tokens.weight").is_some(), "manifest lists both embedding names");
    assert_eq!(requested.len(), expected.len(), "tensor count");
    for (name, shape) in &expected {
        assert_eq!(requested.get(name), Some(shape), "tensor {name}");
    }
    println!("umt5-xxl: {} tensors requested, all names and shapes match the manifest", requested.len());
}

#[test]
fn either_embedding_name_is_accepted() {
    // A checkpoint holding only `encoder.embed_tokens.weight` (no `shared.weight`) loads too.
    let dir = Path::new(GOLDEN).join("umt5/text_encoder");
    let cfg: Config = weights::load_config(&dir).expect("config");
    let mut all = tensor_io::read_all(&dir.join("model.safetensors"), &Device::Cpu).expect("weights");
    let shared = all.remove("shared.weight").expect("shared.weight");
    all.insert("encoder.embed_tokens.weight".into(), shared);
    let vb = candle_nn::VarBuilder::from_tensors(all.clone(), DType::F32, &Device::Cpu);
    let renamed = UMT5EncoderModel::new(&cfg, vb).expect("loads with encoder.embed_tokens.weight");
    let ids = Tensor::new(&[[5u32, 6, 1]], &Device::Cpu).expect("ids");
    let (max_abs, _) =
        errors(&renamed.forward(&ids, None).expect("fwd"), &load_golden_model().forward(&ids, None).expect("fwd"));
    assert_eq!(max_abs, 0.0);

    all.remove("encoder.embed_tokens.weight");
    let vb = candle_nn::VarBuilder::from_tensors(all, DType::F32, &Device::Cpu);
    let err = UMT5EncoderModel::new(&cfg, vb).expect_err("no embedding at all").to_string();
    assert!(err.contains("shared.weight"), "{err}");
}

#[test]
fn bf16_weights_stay_close_to_the_f32_reference() {
    // The real UMT5-XXL is a bf16 checkpoint and runs in bf16 on the host (23 GB in f32 would not
    // fit next to the DiT). bf16 keeps 8 mantissa bits (~4e-3 per rounding); with the f32 residual
    // stream and f32 softmax the output must stay within a few percent of the f32 result.
    let dir = Path::new(GOLDEN).join("umt5/text_encoder");
    let cfg: Config = weights::load_config(&dir).expect("config");
    let vb = Checkpoint::open(&dir).expect("checkpoint").var_builder(DType::BF16, &Device::Cpu).expect("vb");
    let model = UMT5EncoderModel::new(&cfg, vb).expect("bf16 model");
    let case = Path::new(GOLDEN).join("umt5");
    let ids =
        tensor_io::read_tensor(&case.join("inputs.safetensors"), "input_ids", DType::U32, &Device::Cpu).expect("ids");
    let reference =
        tensor_io::read_tensor(&case.join("outputs.safetensors"), "hidden", DType::F32, &Device::Cpu).expect("hidden");
    let hidden = model.forward(&ids, None).expect("bf16 forward");
    assert_eq!(hidden.dtype(), DType::F32);
    let (max_abs, rel) = errors(&hidden, &reference);
    println!("umt5 bf16 vs f32 reference: max-abs {max_abs:e}, relative {rel:e}");
    assert!(rel <= 3e-2, "relative error {rel}");
}

#[test]
fn layers_loaded_separately_compose_to_the_whole_encoder() {
    // Each rank (or an offloading loop) can build only its own layers from the checkpoint; running
    // the slices one after the other must give the whole model's result exactly.
    let dir = Path::new(GOLDEN).join("umt5/text_encoder");
    let cfg: Config = weights::load_config(&dir).expect("config");
    let vb = Checkpoint::open(&dir).expect("checkpoint").var_builder(DType::F32, &Device::Cpu).expect("vb");
    let whole = UMT5EncoderModel::new(&cfg, vb.clone()).expect("model");
    let first = UMT5Layers::new(&cfg, &vb, 0..1).expect("layer 0");
    let second = UMT5Layers::new(&cfg, &vb, 1..2).expect("layer 1");
    assert!(UMT5Layers::new(&cfg, &vb, 1..3).is_err(), "the tiny model has 2 layers");

    let ids = Tensor::new(&[[17u32, 42, 99, 5, 1]], &Device::Cpu).expect("ids");
    let inputs = AttentionInputs::new(&cfg, 5, None, &Device::Cpu).expect("inputs");
    let xs = whole.embed(&ids).expect("embed");
    let xs = second.forward(&first.forward(&xs, &inputs).expect("layer 0"), &inputs).expect("layer 1");
    let split = whole.final_norm(&xs).expect("norm");
    let (max_abs, _) = errors(&split, &whole.forward(&ids, None).expect("whole"));
    assert_eq!(max_abs, 0.0);
}
