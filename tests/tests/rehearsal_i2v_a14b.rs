//! Rehearsal of the I2V-A14B 720p plan for 8 × RTX 4090 (`presets/i2v-a14b-720p-8x4090.toml`) on
//! CPU workers: exactly its structure — 8 worker processes, Ulysses 4 × CFG 2, FSDP 8 over both
//! experts with phased residency (the `switch` phase), the image encode and the decode as halo slabs
//! over all 8 — at a size this machine holds, and every rank's predicted peak in every phase
//! (`tessera plan --json`) within 10% of the heap peak its worker measured (`generate --report`).
//!
//! Width: the real I2V-A14B width (5120, FFN 13824) puts a 1.31 GiB gathered f32 block and 0.93 GiB
//! of replicated stem on every rank (3.3 GiB per rank, 26 GiB for 8; `tessera plan` on the real
//! configs with `--layers`-style depth 2 says so), more than this 23 GB machine has. The rehearsal
//! keeps everything else real — 40 heads (Ulysses 4 divides them as at 720p), the 4096-wide text
//! context, the 36-channel input, the real Wan2.1 VAE — and narrows the head dim 128 → 32 and the
//! FFN 13824 → 3456: the planner's terms are the same formulas of the config (parameter counts,
//! the block replay), so what is checked here is what scales to 40 layers and 720p.
//! At real width, `scripts/calibrate_planner.sh` compares the same phases (phased and pipeline
//! residency) on 2 workers with one block per expert (README, "I2V-A14B 720p on 8 × 4090").

use std::path::Path;

use candle_core::{Device, Tensor};
use tessera_e2e::peaks::{self, peaks};
use tessera_e2e::{error_line, golden, run, tessera};
use tessera_engine::api::planning::load_preset;
use tessera_engine::api::random_models::{write_pipeline, Arch, PipelineSpec, StoreDtype, DIFFUSERS_SHARD_BYTES};
use tessera_engine::api::{ParallelPlan, TextEncoderPlacement};
use tessera_engine::tensor_io;

/// 64×64 (8 latent rows: one per rank of the halo VAE), 5 frames (2 latent frames), CFG 3.5.
const SIZE: [&str; 8] = ["--height", "64", "--width", "64", "--frames", "5", "--guidance", "3.5"];

/// The preset's plan (checked against the file below), with the text encoder on the host: the
/// folder has none, the embeddings are given. Two steps: one per expert.
const PLAN: [&str; 18] = [
    "--ranks",
    "8",
    "--ulysses",
    "4",
    "--cfg-parallel",
    "2",
    "--fsdp",
    "8",
    "--vae-parallel",
    "8",
    "--vae-mode",
    "halo",
    "--residency",
    "phased",
    "--text-encoder-on",
    "cpu",
    "--steps",
    "2",
];

fn write_inputs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dev = Device::Cpu;
    let e = || (Tensor::randn(0f32, 1.0, (1, 512, 4096), &dev).unwrap() * 0.1).unwrap();
    let embeds = dir.join("embeds.safetensors");
    tensor_io::write_atomic(&embeds, &[("prompt_embeds", e()), ("negative_prompt_embeds", e())]).unwrap();
    // The golden I2V-A14B case's 64×64 image.
    (embeds, golden("a14b_i2v/image.png"))
}

#[test]
fn the_8x4090_i2v_plan_rehearsed_on_8_cpu_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("i2v-a14b-narrow");
    let mut spec = PipelineSpec::for_arch(Arch::Wan22I2vA14b, Some(2)).unwrap().unwrap();
    for cfg in std::iter::once(&mut spec.transformer).chain(spec.transformer_2.as_mut()) {
        cfg.attention_head_dim = 32;
        cfg.ffn_dim = 3456;
    }
    write_pipeline(&model, &spec, 0, StoreDtype::F32, DIFFUSERS_SHARD_BYTES).unwrap();
    let (embeds, image) = write_inputs(tmp.path());
    // The flags are the preset's plan (`plan --preset` would also take its `gpus`, i.e. CUDA).
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets/i2v-a14b-720p-8x4090.toml");
    let preset = load_preset(&preset).unwrap().plan;

    let report = tmp.path().join("report.json");
    let o = run(tessera()
        .args(["generate", "--model"])
        .arg(&model)
        .arg("--prompt-embeds")
        .arg(&embeds)
        .arg("--negative-prompt-embeds")
        .arg(&embeds)
        .arg("--image")
        .arg(&image)
        .args(SIZE)
        .args(PLAN)
        .arg("--out")
        .arg(tmp.path().join("video.safetensors"))
        .arg("--report")
        .arg(&report));
    assert!(o.status.success(), "{}", error_line(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let ran: ParallelPlan = serde_json::from_value(r["plan"].clone()).unwrap();
    assert_eq!(ran, ParallelPlan { text_encoder: TextEncoderPlacement::Cpu, ..preset }, "the preset's plan");
    let measured = peaks(&r);

    let o = run(tessera()
        .args(["plan", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .args(SIZE)
        .args(PLAN)
        .args(["--device", "cpu", "--threads", "1", "--json"]));
    assert!(o.status.success(), "{}", error_line(&o));
    let predicted = peaks(&serde_json::from_slice(&o.stdout).unwrap());
    let rows = peaks::rows("i2v-a14b preset", &predicted, &measured);
    for (rank, phases) in &measured {
        let order: Vec<&str> = phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["load", "encode_image", "denoise_high", "switch", "denoise_low", "decode"], "rank {rank}");
    }
    peaks::check(&rows);
}
