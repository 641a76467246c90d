//! `tessera encode-prompt --text-encoder-on sharded`: UMT5 split by layer over worker processes gives
//! diffusers' embeddings (both prompts of the golden case), and each rank reports only its share of
//! the encoder's weights.

use tessera_e2e::{errors, golden, run, tessera};
use tessera_engine::tensor_io;

#[test]
fn sharded_text_encoder_on_worker_processes_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("prompt").join("case.json")).unwrap()).unwrap();
    let prompts: Vec<&str> = case["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let want = tensor_io::read_all(&golden("prompt").join("outputs.safetensors"), &candle_core::Device::Cpu).unwrap();
    let out = dir.path().join("embeds.safetensors");
    let report = dir.path().join("report.json");
    let o = run(tessera()
        .args(["encode-prompt", "--model"])
        .arg(golden("prompt"))
        .args(["--prompt", prompts[0], "--negative-prompt", prompts[1], "--max-sequence-length", "64"])
        .args(["--text-encoder-on", "sharded", "--ranks", "2", "--bypass-cache", "--out"])
        .arg(&out)
        .arg("--report")
        .arg(&report));
    assert!(o.status.success());
    let got = tensor_io::read_all(&out, &candle_core::Device::Cpu).unwrap();
    for (i, name) in ["prompt_embeds", "negative_prompt_embeds"].iter().enumerate() {
        let (max, rel) = errors(&got[*name], &want[&format!("prompt_embeds_{i}")]);
        println!("sharded text encoder on 2 worker processes, {name}: max_abs {max:.2e} rel {rel:.2e}");
        assert!(rel < 1e-4);
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let bytes: Vec<u64> = r["ranks"].as_array().unwrap().iter().map(|r| r["weights_bytes"].as_u64().unwrap()).collect();
    let total: u64 = bytes.iter().sum();
    assert!(bytes.iter().all(|b| *b > 0 && *b < total), "each rank holds a share: {bytes:?}");
}
