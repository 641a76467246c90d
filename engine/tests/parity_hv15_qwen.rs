//! The Qwen2.5-VL text model (HunyuanVideo 1.5's MLLM encoder) against transformers on a tiny golden
//! model (`tests/fixtures/hv15/qwen`, written by `scripts/gen_hv15_qwen.py`; bf16-stored weights, GQA,
//! mRoPE sections): every hidden state of the fully valid row, and `hidden_states[-3]` (what the
//! pipeline takes) of both rows, the right-padded one run unpadded (valid rows compared).
//! `HV15_QWEN_CASE=<dir>` runs the same on another case (e.g. the shared golden `hv15/qwen`).
//!
//! Tolerance: f32 references; summation order only (~1e-6); 1e-4 is the project's f32 budget.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::assert_close;
use tessera_engine::models::qwen25vl_text;
use tessera_engine::tensor_io;

const TOL: f64 = 1e-4;

fn case_dir() -> PathBuf {
    match std::env::var_os("HV15_QWEN_CASE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/qwen"),
    }
}

#[test]
fn qwen_text_model_matches_transformers() {
    let dev = Device::Cpu;
    let dir = case_dir();
    println!("case {}", dir.display());
    let model = qwen25vl_text::load(&dir.join("text_encoder"), DType::F32, &dev).unwrap();
    let i = tensor_io::read_all(&dir.join("inputs.safetensors"), &dev).unwrap();
    let o = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let ids = i["input_ids"].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let mask = i["attention_mask"].to_vec2::<f32>().unwrap();
    let layers = model.config().num_hidden_layers;
    for (row, (ids, mask)) in ids.iter().zip(&mask).enumerate() {
        let valid: Vec<u32> = ids.iter().zip(mask).filter(|(_, m)| **m != 0.0).map(|(id, _)| *id).collect();
        let n = valid.len();
        let want = |k: &str| o[k].get(row).unwrap().narrow(0, 0, n).unwrap();
        let got = model.hidden_skipping(&valid, 2).unwrap();
        assert_close(&format!("row {row} ({n} valid): hidden_states[-3]"), &got, &want("hidden_m3"), TOL);
        if n == ids.len() {
            for l in 0..layers {
                let got = model.hidden(&valid, l).unwrap();
                assert_close(
                    &format!("row {row}: hidden_states[{l}]"),
                    &got,
                    &want(&format!("hidden_states_{l}")),
                    TOL,
                );
            }
            let got = model.last_hidden_state(&valid).unwrap();
            assert_close(&format!("row {row}: last_hidden_state"), &got, &want("last_hidden_state"), TOL);
        }
    }
}
