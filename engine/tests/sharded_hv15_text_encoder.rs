//! `--text-encoder-on sharded` for HunyuanVideo 1.5: the Qwen2.5-VL text model split by layer over
//! 2 and 3 ranks (threads over `ThreadComm`; the worker processes run the same code over sockets,
//! see `session_hv15.rs`) gives every rank the host's MLLM prompt embeddings and diffusers'
//! (`tests/fixtures/hv15/prompt`: `_get_mllm_prompt_embeds` of six prompts with the tiny golden
//! Qwen of `hv15/qwen` — the same weights — and its tokenizer), each rank holding only its share
//! of the layers `hidden_states[-3]` needs, as the planner predicts; the two layers past it are
//! never read.
//!
//! Tolerance: the same layers run the same ops on the same rows, and the hidden state crosses ranks
//! as an exact f32 copy, so the split equals the host encode (checked ≤ 1e-6 relative, to stay
//! robust to a change of kernel threading); diffusers within `parity_hv15_prompt`'s 1e-5.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{errors, on_ranks};
use tessera_engine::model_spec::TextModel;
use tessera_engine::models::qwen25vl_text;
use tessera_engine::planner::hv15::{text_encode_terms, QwenSize};
use tessera_engine::planner::{Options, Target};
use tessera_engine::tensor_io;
use tessera_engine::text::hv15::{mllm_embeds, MllmTokenizer};
use tessera_engine::text::hv15_sharded::ShardedMllmEncoder;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15")
}

/// The golden Qwen (`hv15/qwen/text_encoder`) and the prompt case's tokenizer.
fn text_model(encoder: &Path) -> TextModel {
    TextModel { encoder: encoder.to_path_buf(), tokenizer: fixtures().join("prompt/tokenizer") }
}

struct Case {
    prompts: Vec<String>,
    max_len: usize,
    outputs: std::collections::HashMap<String, Tensor>,
}

fn case() -> Case {
    let dir = fixtures().join("prompt");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    Case {
        prompts: serde_json::from_value(json["prompts"].clone()).unwrap(),
        max_len: json["tokenizer_max_length"].as_u64().unwrap() as usize,
        outputs: tensor_io::read_all(&dir.join("outputs.safetensors"), &Device::Cpu).unwrap(),
    }
}

/// Every prompt's embeddings and the weights held, on every rank of a `world`-rank split.
fn split_encode(encoder: &Path, world: usize, prompts: &[String], max_len: usize) -> Vec<(u64, Vec<Tensor>)> {
    let (model, prompts) = (text_model(encoder), prompts.to_vec());
    on_ranks(world, move |comm| {
        let enc = ShardedMllmEncoder::load(&model, &Device::Cpu, comm).unwrap();
        assert!(enc.layers().end <= 2, "a layer past hidden_states[-3] was loaded: {:?}", enc.layers());
        let embeds = prompts.iter().map(|p| enc.encode(p, max_len).unwrap()).collect();
        (enc.weights_bytes(), embeds)
    })
}

#[test]
fn split_qwen_equals_the_host_encode_and_diffusers() {
    let case = case();
    let encoder = fixtures().join("qwen/text_encoder");
    let tok = MllmTokenizer::from_path(&fixtures().join("prompt/tokenizer")).unwrap();
    let host = qwen25vl_text::load(&encoder, DType::F32, &Device::Cpu).unwrap();
    let want: Vec<Tensor> = case.prompts.iter().map(|p| mllm_embeds(&host, &tok, p, case.max_len).unwrap()).collect();
    let q: QwenSize = serde_json::from_str(&std::fs::read_to_string(encoder.join("config.json")).unwrap()).unwrap();
    for world in [2, 3] {
        let results = split_encode(&encoder, world, &case.prompts, case.max_len);
        for (rank, (bytes, embeds)) in results.iter().enumerate() {
            // Two of the four layers run: a third rank holds nothing and still gets the result.
            assert_eq!(*bytes > 0, rank < 2, "rank {rank} of {world} holds {bytes} bytes");
            let predicted = text_encode_terms(&q, &Options::new(Target::Cpu), rank, world, 1)[0].bytes;
            assert_eq!(*bytes, predicted, "rank {rank} of {world}: held vs the planner's text encoder weights");
            for (i, got) in embeds.iter().enumerate() {
                let (max, rel) = errors(got, &want[i]);
                let valid = want[i].dim(1).unwrap();
                let golden = case.outputs[&format!("mllm_embeds_{i}")].narrow(1, 0, valid).unwrap();
                let (gmax, grel) = errors(got, &golden);
                println!(
                    "x{world} rank {rank} prompt {i} ({valid} tokens): vs host max-abs {max:.2e} rel {rel:.2e}; vs diffusers max-abs {gmax:.2e} rel {grel:.2e}"
                );
                assert!(rel <= 1e-6, "x{world} rank {rank} prompt {i}: rel {rel:.2e} vs the host encode");
                assert!(grel <= 1e-5, "x{world} rank {rank} prompt {i}: rel {grel:.2e} vs diffusers");
            }
        }
    }
}

/// A checkpoint without the layers past `hidden_states[-3]` and without the final norm encodes the
/// same: the split never reads them.
#[test]
fn layers_past_the_taken_state_are_never_read() {
    let case = case();
    let full = fixtures().join("qwen/text_encoder");
    let tmp = tempfile::tempdir().unwrap();
    let pruned = tmp.path().join("text_encoder");
    std::fs::create_dir(&pruned).unwrap();
    std::fs::copy(full.join("config.json"), pruned.join("config.json")).unwrap();
    let all = tensor_io::read_all(&full.join("model.safetensors"), &Device::Cpu).unwrap();
    let kept: Vec<(&str, Tensor)> = all
        .iter()
        .filter(|(k, _)| k.starts_with("embed_tokens.") || k.starts_with("layers.0.") || k.starts_with("layers.1."))
        .map(|(k, t)| (k.as_str(), t.clone()))
        .collect();
    assert!(kept.len() < all.len(), "nothing was pruned");
    tensor_io::write_atomic(&pruned.join("model.safetensors"), &kept).unwrap();
    let prompts = &case.prompts[..2];
    let want = split_encode(&full, 2, prompts, case.max_len);
    let got = split_encode(&pruned, 2, prompts, case.max_len);
    for ((_, a), (_, b)) in got.iter().zip(&want) {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(errors(x, y).0, 0.0, "the pruned checkpoint encodes differently");
        }
    }
}

/// A missing or corrupt `text_encoder/` is one line naming the folder or file and what to do,
/// on every rank, before any rank waits on another.
#[test]
fn a_missing_or_corrupt_text_encoder_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("text_encoder");
    let corrupt = tmp.path().join("corrupt/text_encoder");
    std::fs::create_dir_all(&corrupt).unwrap();
    let full = fixtures().join("qwen/text_encoder");
    std::fs::copy(full.join("config.json"), corrupt.join("config.json")).unwrap();
    let bytes = std::fs::read(full.join("model.safetensors")).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    for (encoder, expect) in [(&missing, "text_encoder"), (&corrupt, "truncated")] {
        let model = text_model(encoder);
        let errs = on_ranks(2, move |comm| match ShardedMllmEncoder::load(&model, &Device::Cpu, comm) {
            Ok(_) => panic!("loaded a broken text encoder"),
            Err(e) => e.to_string(),
        });
        for e in errs {
            println!("{e}");
            assert!(!e.contains('\n') && e.contains(expect) && e.contains(&encoder.display().to_string()), "{e}");
        }
    }
}
