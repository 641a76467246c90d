//! `--text-encoder-on sharded`: UMT5 split by layer over ranks (threads of this process over
//! `ThreadComm`; worker processes run the same code over sockets, see tests/tests/cli_text.rs)
//! gives every rank the single-device embeddings, and each rank holds only its share of the weights.
//!
//! Tolerance: the same layers run the same ops on the same rows; only the hand-over between ranks
//! differs, which is a copy. So sharded equals single-device exactly (checked ≤1e-6 to stay robust
//! to a future change of kernel threading), and the golden diffusers reference at ≤1e-4.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::on_ranks;
use tessera_engine::model_spec::TextModel;
use tessera_engine::tensor_io;
use tessera_engine::text::sharded::{embed_prompts_sharded, ShardedTextEncoder};
use tessera_engine::text::{PromptCache, TextEncoder, TextEncoderOptions};

const CASES: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/prompt"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden-seed1/prompt"),
];

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (d / n.max(1e-30)).sqrt()
}

#[test]
fn sharded_encoder_equals_single_device_on_every_rank() {
    for dir in CASES {
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("case.json")).unwrap()).unwrap();
        let max_len = case["max_sequence_length"].as_u64().unwrap() as usize;
        let prompts: Vec<String> =
            case["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
        let opts = TextEncoderOptions { device: Device::Cpu, dtype: Some(DType::F32), max_sequence_length: max_len };
        let single = TextEncoder::load(&TextModel::in_folder(Path::new(dir)), &opts).unwrap();
        let outputs = tensor_io::read_all(&Path::new(dir).join("outputs.safetensors"), &Device::Cpu).unwrap();
        for world in [2, 3] {
            let (p, o) = (prompts.clone(), opts.clone());
            let results = on_ranks(world, move |comm| {
                let enc = ShardedTextEncoder::load(&TextModel::in_folder(Path::new(dir)), &o, comm).unwrap();
                let embeds: Vec<Tensor> = p.iter().map(|s| enc.encode(s).unwrap()).collect();
                (enc.weights_bytes(), embeds)
            });
            let total: u64 = results.iter().map(|(b, _)| b).sum();
            for (rank, (bytes, embeds)) in results.iter().enumerate() {
                // The tiny encoder has 2 layers: a third rank holds nothing and still gets the result.
                assert!(*bytes < total && (*bytes > 0) == (rank < 2), "rank {rank} holds {bytes} of {total} bytes");
                for (i, e) in embeds.iter().enumerate() {
                    let want = single.encode(&prompts[i]).unwrap();
                    let (r1, r2) = (rel(e, &want), rel(e, &outputs[&format!("prompt_embeds_{i}")]));
                    println!(
                        "{dir} x{world} rank {rank} prompt {i}: rel vs single-device {r1:.2e}, vs diffusers {r2:.2e}"
                    );
                    assert!(r1 <= 1e-6 && r2 <= 1e-4);
                }
            }
        }
    }
}

#[test]
fn cache_hits_reach_every_rank_without_loading_the_encoder() {
    let dir = CASES[0];
    let cache_dir = tempfile::tempdir().unwrap();
    let opts = TextEncoderOptions { device: Device::Cpu, dtype: Some(DType::F32), max_sequence_length: 64 };
    for expect_load in [true, false] {
        let (o, c) = (opts.clone(), cache_dir.path().to_path_buf());
        let results = on_ranks(2, move |comm| {
            let cache = PromptCache::new(&c);
            embed_prompts_sharded(&TextModel::in_folder(Path::new(dir)), &["a cat", "a dog"], &o, Some(&cache), comm)
                .unwrap()
        });
        for (embeds, weights) in &results {
            assert_eq!(embeds.len(), 2);
            assert_eq!(*weights > 0, expect_load, "second run must be served from the cache");
        }
        let a = results[0].0[1].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = results[1].0[1].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "ranks disagree");
    }
}
