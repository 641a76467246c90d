//! HunyuanVideo 1.5's MLLM prompt against diffusers (`tests/fixtures/hv15/prompt`, written by
//! `scripts/gen_hv15_prompt.py`): the chat template, the tokenizer's `crop_start` (113 for this
//! synthetic byte-level BPE tokenizer; 108 for the real one), truncation, and
//! `_get_mllm_prompt_embeds` = `hidden_states[-3][:, crop_start:]` for six prompts (quotes, non-ASCII,
//! empty, cut at the limit). Only valid rows are compared (diffusers' padded rows hold pad-token
//! states that nothing downstream reads).
//!
//! Tolerance 1e-5 relative: two f32 decoder layers of a 32-wide model (torch vs candle reduction
//! order; the Qwen parity test measures ≤ 2e-7).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::assert_close;
use tessera_engine::models::qwen25vl_text;
use tessera_engine::tensor_io;
use tessera_engine::text::hv15::{chat_template, mllm_embeds, MllmTokenizer, SYSTEM_MESSAGE};

fn case() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/prompt")
}

#[test]
fn hv15_mllm_prompt_matches_diffusers() {
    let dev = Device::Cpu;
    let dir = case();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let prompts: Vec<String> = serde_json::from_value(json["prompts"].clone()).unwrap();
    let templates: Vec<String> = serde_json::from_value(json["rendered_templates"].clone()).unwrap();
    let max_len = json["tokenizer_max_length"].as_u64().unwrap() as usize;
    assert_eq!(json["system_message"].as_str(), Some(SYSTEM_MESSAGE));
    let tok = MllmTokenizer::from_path(&dir.join("tokenizer")).unwrap();
    assert_eq!(tok.crop_start() as u64, json["crop_start"].as_u64().unwrap(), "crop_start of this tokenizer");
    let model = qwen25vl_text::load(&dir.join("text_encoder"), DType::F32, &dev).unwrap();
    let o = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    for (i, (p, t)) in prompts.iter().zip(&templates).enumerate() {
        assert_eq!(&chat_template(p, SYSTEM_MESSAGE), t, "template of prompt {i}");
        let mask: Vec<f32> = o[&format!("mllm_embeds_mask_{i}")].get(0).unwrap().to_vec1().unwrap();
        let valid = mask.iter().filter(|m| **m != 0.0).count();
        let got = mllm_embeds(&model, &tok, p, max_len).unwrap();
        assert_eq!(got.dims(), &[1, valid, 32], "prompt {i}: valid tokens after the crop");
        let want = o[&format!("mllm_embeds_{i}")].narrow(1, 0, valid).unwrap();
        assert_close(&format!("prompt {i} ({valid} tokens)"), &got, &want, 1e-5);
    }
}
