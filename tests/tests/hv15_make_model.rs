//! A real-architecture HunyuanVideo 1.5 folder from `tessera make-model --arch hv15-480p-t2v
//! --layers 1` (the published 480p T2V config cut to one dual-stream block: real widths, the real
//! 1.26 B-parameter VAE) generates on two CPU worker processes, and `tessera plan --json`
//! predicts every rank's heap peak in every phase of those runs within 10% (`generate --report`,
//! the counting allocator), as `plan_vs_measured.rs` does for Wan.
//!
//! Two plans: Ulysses 2 with a halo VAE over both ranks and `--weights free` (the job drops the
//! transformer before the decode), and CFG 2 with FSDP 2 and the default `--weights keep` (each
//! rank keeps half of the block, gathers it whole per forward; rank 1 does not decode).

use std::path::Path;

use candle_core::{Device, Tensor};
use tessera_e2e::peaks::{self, peaks};
use tessera_e2e::{error_line, run, tessera};
use tessera_engine::tensor_io;

/// 128×128, 5 frames (2 latent frames: the streamed decode runs its first and a steady chunk),
/// one step: the real VAE's decode is most of the run time on a CPU.
const SIZE: [&str; 8] = ["--height", "128", "--width", "128", "--frames", "5", "--guidance", "6"];

const PLANS: [(&str, &[&str]); 2] = [
    (
        "ulysses 2, halo VAE 2, weights freed",
        &["--ranks", "2", "--ulysses", "2", "--vae-parallel", "2", "--vae-mode", "halo", "--weights", "free"],
    ),
    (
        "cfg 2, fsdp 2, weights kept",
        &["--ranks", "2", "--ulysses", "1", "--cfg-parallel", "2", "--fsdp", "2", "--vae-parallel", "1"],
    ),
];

/// `(1, 512, 3584)` Qwen-width prompt and negative embeddings (all tokens valid: 512 is the
/// planner's default context length).
fn write_embeds(path: &Path) {
    let dev = Device::Cpu;
    let e = || (Tensor::randn(0f32, 1.0, (1, 512, 3584), &dev).unwrap() * 0.1).unwrap();
    tensor_io::write_atomic(path, &[("prompt_embeds", e()), ("negative_prompt_embeds", e())]).unwrap();
}

#[test]
fn a_make_model_hv15_folder_generates_on_two_workers_as_planned() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hv15");
    let o = run(tessera().args(["make-model", "--arch", "hv15-480p-t2v", "--layers", "1", "--out"]).arg(&model));
    assert!(o.status.success(), "{}", error_line(&o));
    for f in ["model_index.json", "transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"] {
        assert!(model.join(f).is_file(), "make-model wrote no {f}");
    }
    // One block of the published 8.33 B model (its stem and one of 54 blocks) and the whole VAE,
    // with the manifests' tensor counts (1801 − 53 × 32 block tensors; 218).
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(said.contains("transformer: 105 tensors, 320592672 parameters"), "{said}");
    assert!(said.contains("vae: 218 tensors, 1260634115 parameters"), "{said}");
    let embeds = tmp.path().join("embeds.safetensors");
    write_embeds(&embeds);

    let mut rows = Vec::new();
    for (label, plan) in PLANS {
        let report = tmp.path().join("report.json");
        let video = tmp.path().join("video.safetensors");
        let o = run(tessera()
            .args(["generate", "--model"])
            .arg(&model)
            .arg("--prompt-embeds")
            .arg(&embeds)
            .arg("--negative-prompt-embeds")
            .arg(&embeds)
            .args(SIZE)
            .args(["--steps", "1", "--seed", "0", "--out"])
            .arg(&video)
            .arg("--report")
            .arg(&report)
            .args(plan));
        assert!(o.status.success(), "{label}: {}", error_line(&o));
        let v = tensor_io::read_all(&video, &Device::Cpu).unwrap();
        assert_eq!(v["video"].dims(), &[1, 5, 3, 128, 128], "{label}");
        let finite = v["video"].flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite());
        assert!(finite, "{label}: the video has non-finite values");
        let measured = peaks(&serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap());
        let o = run(tessera()
            .args(["plan", "--model"])
            .arg(&model)
            .args(SIZE)
            .args(plan)
            .args(["--device", "cpu", "--json"]));
        assert!(o.status.success(), "{label}: {}", error_line(&o));
        let predicted = peaks(&serde_json::from_slice(&o.stdout).unwrap());
        rows.extend(peaks::rows(label, &predicted, &measured));
    }
    peaks::check(&rows);
}
