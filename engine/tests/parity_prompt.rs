//! Prompt → embeddings parity with diffusers' `WanPipeline._get_t5_prompt_embeds` on the golden
//! `prompt` case (a tiny Unigram tokenizer + the tiny UMT5, max_sequence_length 64): cleaning,
//! token ids and masks (exact), embeddings (≤1e-4 relative), plus truncation, errors and caching.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tessera_engine::model_spec::TextModel;
use tessera_engine::tensor_io;
use tessera_engine::text::{self, PromptCache, PromptTokenizer, TextEncoder, TextEncoderOptions, TextError};

const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/prompt");

/// The seed-1 case: other prompts (one with characters the tiny vocabulary lacks) and weights.
const CASE_SEED1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden-seed1/prompt");

fn case(dir: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("case.json")).expect("case.json")).expect("json")
}

fn opts(max_sequence_length: usize) -> TextEncoderOptions {
    TextEncoderOptions { device: Device::Cpu, dtype: Some(DType::F32), max_sequence_length }
}

fn errors(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let diff = (ours - reference).expect("same shape");
    let max_abs = diff.abs().and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>());
    let norm = |t: &Tensor| t.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("norm").sqrt();
    (max_abs.expect("max"), norm(&diff) / norm(reference))
}

fn prompts(case: &serde_json::Value) -> Vec<String> {
    case["prompts"].as_array().expect("prompts").iter().map(|p| p.as_str().expect("str").to_string()).collect()
}

#[test]
fn ids_masks_and_embeddings_match_diffusers() {
    for dir in [CASE, CASE_SEED1] {
        check_case(dir);
    }
}

fn check_case(dir: &str) {
    let case = case(dir);
    let max_len = case["max_sequence_length"].as_u64().expect("max_sequence_length") as usize;
    let encoder = TextEncoder::load(&TextModel::in_folder(Path::new(dir)), &opts(max_len)).expect("load text encoder");
    let outputs = tensor_io::read_all(&Path::new(dir).join("outputs.safetensors"), &Device::Cpu).expect("outputs");

    for (i, prompt) in prompts(&case).iter().enumerate() {
        assert_eq!(text::prompt_clean(prompt), case["cleaned"][i].as_str().expect("cleaned"), "cleaning of prompt {i}");

        let tokens = encoder.tokenize(prompt).expect("tokenize");
        let ref_ids: Vec<u32> = outputs[&format!("ids_{i}")]
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("ids")
            .iter()
            .map(|&x| x as u32)
            .collect();
        let ref_mask: Vec<u32> = outputs[&format!("mask_{i}")]
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("mask")
            .iter()
            .map(|&x| x as u32)
            .collect();
        assert_eq!(tokens.ids, ref_ids, "token ids of prompt {i}");
        assert_eq!(tokens.mask, ref_mask, "attention mask of prompt {i}");

        let embeds = encoder.encode(prompt).expect("encode");
        let reference = &outputs[&format!("prompt_embeds_{i}")];
        assert_eq!(embeds.dims(), reference.dims());
        let (max_abs, rel) = errors(&embeds, reference);
        println!("{dir}: prompt {i} ({} tokens): prompt_embeds max-abs {max_abs:e}, relative {rel:e}", tokens.len);
        // f32 on both sides; the encoder runs on the real tokens only (no padded keys), which only
        // changes summation order. Padded rows must be exact zeros in both.
        assert!(rel <= 1e-4, "prompt {i}: relative error {rel} (max-abs {max_abs})");
        let tail = embeds.narrow(1, tokens.len, max_len - tokens.len).expect("tail");
        assert_eq!(tail.abs().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("sum"), 0.0);
    }
}

#[test]
fn long_prompts_are_truncated_like_transformers() {
    // transformers `truncation=True, max_length=N` keeps the first N−1 tokens and appends `</s>`;
    // nothing is padded and the embeddings have no zero rows.
    let tokenizer = PromptTokenizer::from_path(Path::new(CASE)).expect("tokenizer");
    let long = "a white cat wearing sunglasses sits on a surfboard at the summer beach ".repeat(20);
    let cleaned = text::prompt_clean(&long);
    let full = tokenizer.encode(&cleaned, 100_000).expect("untruncated");
    assert!(full.len > 64, "the test prompt must be longer than the limit ({} tokens)", full.len);

    let truncated = tokenizer.encode(&cleaned, 64).expect("truncated");
    assert_eq!(truncated.len, 64);
    assert_eq!(truncated.mask, vec![1; 64]);
    assert_eq!(&truncated.ids[..63], &full.ids[..63]);
    assert_eq!(truncated.ids[63], 1, "the last token is </s> (id 1)");

    let encoder = TextEncoder::load(&TextModel::in_folder(Path::new(CASE)), &opts(64)).expect("load");
    let embeds = encoder.encode(&long).expect("encode");
    assert_eq!(embeds.dims(), &[1, 64, 32]);
    let row_norms = embeds
        .sqr()
        .and_then(|t| t.sum(2))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("norms");
    assert!(row_norms.iter().all(|n| n.is_finite() && *n > 0.0), "every row is a real token");
}

#[test]
fn missing_tokenizer_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(CASE).join("text_encoder"), &dir.path().join("text_encoder"));
    let err = TextEncoder::load(&TextModel::in_folder(dir.path()), &opts(64)).expect_err("no tokenizer");
    let expected = dir.path().join("tokenizer").join("tokenizer.json");
    assert!(matches!(&err, TextError::MissingTokenizer(p) if *p == expected), "{err:?}");
    assert!(err.to_string().contains(&expected.display().to_string()), "{err}");
    // The cached path checks it first too, before touching the cache or the weights.
    let err =
        text::embed_prompts(&TextModel::in_folder(dir.path()), &["a cat"], &opts(64), None).expect_err("no tokenizer");
    assert!(matches!(&err, TextError::MissingTokenizer(p) if *p == expected), "{err:?}");
}

#[test]
fn cached_embeddings_skip_the_encoder() {
    let root = tempfile::tempdir().expect("tempdir");
    for sub in ["text_encoder", "tokenizer"] {
        copy_dir(&Path::new(CASE).join(sub), &root.path().join(sub));
    }
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = PromptCache::new(cache_dir.path());
    let prompts = ["A white cat wearing sunglasses", "  A white   cat wearing sunglasses "];

    let first =
        text::embed_prompts(&TextModel::in_folder(root.path()), &prompts, &opts(64), Some(&cache)).expect("encode");
    let direct = TextEncoder::load(&TextModel::in_folder(root.path()), &opts(64))
        .expect("load")
        .encode(prompts[0])
        .expect("encode");
    assert_eq!(errors(&first[0], &direct).0, 0.0);
    // Both prompts clean to the same text, so they share one entry.
    let entries: Vec<PathBuf> =
        std::fs::read_dir(cache_dir.path()).expect("ls").map(|e| e.expect("entry").path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    // Overwrite the entry with a marker: a second run must return it, i.e. not run the encoder.
    let marker = Tensor::full(7f32, (1, 64, 32), &Device::Cpu).expect("marker");
    tensor_io::write_atomic(&entries[0], &[("prompt_embeds", marker.clone())]).expect("write");
    let second = text::embed_prompts(&TextModel::in_folder(root.path()), &prompts[..1], &opts(64), Some(&cache))
        .expect("cached");
    assert_eq!(errors(&second[0], &marker).0, 0.0);

    // A different max_sequence_length is a different entry.
    let other = text::embed_prompts(&TextModel::in_folder(root.path()), &prompts[..1], &opts(32), Some(&cache))
        .expect("encode 32");
    assert_eq!(other[0].dims(), &[1, 32, 32]);
    assert_eq!(std::fs::read_dir(cache_dir.path()).expect("ls").count(), 2);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
