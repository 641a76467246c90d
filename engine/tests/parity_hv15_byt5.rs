//! HunyuanVideo 1.5's ByT5 glyph encoder against diffusers / transformers
//! (`tests/fixtures/hv15/prompt`: `tokenizer_2/`, `text_encoder_2/` and `byt5.safetensors`, copied from
//! the shared golden case by `scripts/copy_hv15_small_cases.py`): `_get_byt5_prompt_embeds(...,
//! tokenizer_max_length=64)` for six prompts — UTF-8 bytes + 3, added tokens (`<en-font-0>`,
//! `<color-1>`) matched first, truncation at 64 keeping `</s>`, no quotes → no glyph tokens — through the
//! shared UMT5/T5 encoder with `model_type: "t5"` (layer 0's relative bias in every layer).
//!
//! Only valid rows are compared (padded rows are pad-token states nothing reads). Tolerance 1e-4
//! relative: two f32 T5 layers of a 20-wide model (torch vs candle summation order; measured ~1e-7).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::assert_close;
use tessera_engine::tensor_io;
use tessera_engine::text::byt5::GlyphEncoder;
use tessera_engine::text::hv15::glyph_text;

fn case() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/prompt")
}

#[test]
fn hv15_byt5_glyph_embeds_match_diffusers() {
    let dev = Device::Cpu;
    let dir = case();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let prompts: Vec<String> = serde_json::from_value(json["prompts"].clone()).unwrap();
    let max_len = 64; // the golden case's `_get_byt5_prompt_embeds(..., tokenizer_max_length=64)`
    let enc = GlyphEncoder::load(&dir, &dev).unwrap();
    let o = tensor_io::read_all(&dir.join("byt5.safetensors"), &dev).unwrap();
    let mut with_glyphs = 0;
    for (i, p) in prompts.iter().enumerate() {
        let mask: Vec<f32> = o[&format!("byt5_embeds_mask_{i}")].get(0).unwrap().to_vec1().unwrap();
        let valid = mask.iter().filter(|m| **m != 0.0).count();
        let got = enc.embeds(p, max_len).unwrap();
        let Some(got) = got else {
            assert_eq!(valid, 0, "prompt {i}: diffusers found glyph text, we did not");
            assert!(glyph_text(p).is_none());
            println!("prompt {i}: no quoted text, no glyph tokens (as diffusers: zero mask)");
            continue;
        };
        with_glyphs += 1;
        let ids: Vec<u32> = o[&format!("byt5_ids_{i}")]
            .get(0)
            .unwrap()
            .narrow(0, 0, valid)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours = enc.tokenizer().ids(&glyph_text(p).unwrap(), max_len).unwrap();
        assert_eq!(ours, ids, "prompt {i}: ByT5 token ids");
        assert_eq!(got.dims(), &[1, valid, 20], "prompt {i}: valid glyph tokens");
        let want = o[&format!("byt5_embeds_{i}")].narrow(1, 0, valid).unwrap();
        assert_close(&format!("prompt {i} ({valid} glyph tokens)"), &got, &want, 1e-4);
    }
    assert_eq!(with_glyphs, 4, "four of the six prompts have quoted text");
}

#[test]
fn byt5_truncation_keeps_eos_and_added_tokens_win() {
    let tok = tessera_engine::text::byt5::ByT5Tokenizer::from_path(&case().join("tokenizer_2")).unwrap();
    // `<extra_id_10>` (269) must not split as `<extra_id_1>` (260) + "0>".
    assert_eq!(tok.ids("<extra_id_10>a", 16).unwrap(), vec![269, b'a' as u32 + 3, 1]);
    let ids = tok.ids("abcdef", 4).unwrap();
    assert_eq!(ids, vec![b'a' as u32 + 3, b'b' as u32 + 3, b'c' as u32 + 3, 1]);
    // Non-ASCII is its UTF-8 bytes.
    assert_eq!(tok.ids("é", 8).unwrap(), vec![0xc3 + 3, 0xa9 + 3, 1]);
}
