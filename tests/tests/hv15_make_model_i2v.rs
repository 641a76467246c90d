//! A real-architecture HunyuanVideo 1.5 image-to-video folder from `tessera make-model --arch
//! hv15-480p-i2v --layers 1` (one dual-stream block, one SigLIP layer of the so400m tower, the
//! real 1.26 B-parameter VAE) generates from a first frame on two CPU worker processes, and
//! `tessera plan --json --image` predicts every rank's heap peak in every phase of those runs —
//! `encode_image` included (rank 0: SigLIP, then the VAE group's encode) — within 10%
//! (`generate --report`, the counting allocator), as `hv15_make_model.rs` does for text-to-video.
//!
//! The run size must be the image's bucket (`transformer.config.target_size` picks it). The
//! published 640 gives buckets of about 640² pixels, whose decode through the real VAE takes far
//! longer than a test may on a CPU, so the folder's `target_size` is set to 128 (it only chooses
//! the bucket; the forward never reads it): a 128×128 image is then its own bucket, the T2V test's
//! size.
//!
//! Two plans: Ulysses 2 with a halo VAE over both ranks (both encode a slab of the image) and
//! `--weights free`, and CFG 2 with FSDP 2 and the VAE on rank 0 alone (rank 1 neither encodes
//! nor decodes).

use std::path::Path;

use candle_core::{Device, Tensor};
use tessera_e2e::peaks::{self, peaks};
use tessera_e2e::{error_line, run, tessera};
use tessera_engine::tensor_io;

/// 128×128, 5 frames (2 latent frames), one step, as the T2V test.
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

/// `(1, 512, 3584)` Qwen-width prompt and negative embeddings (512: the planner's default).
fn write_embeds(path: &Path) {
    let dev = Device::Cpu;
    let e = || (Tensor::randn(0f32, 1.0, (1, 512, 3584), &dev).unwrap() * 0.1).unwrap();
    tensor_io::write_atomic(path, &[("prompt_embeds", e()), ("negative_prompt_embeds", e())]).unwrap();
}

/// A 128×128 RGB gradient.
fn write_image(path: &Path) {
    let rgb: Vec<u8> = (0..128 * 128)
        .flat_map(|i| [(i % 128 * 2) as u8, (i / 128 * 2) as u8, ((i % 128 + i / 128) % 256) as u8])
        .collect();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(std::fs::File::create(path).unwrap()), 128, 128);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
}

/// Sets the folder's `target_size` so that a 128×128 image is its own bucket.
fn small_buckets(model: &Path) {
    let path = model.join("transformer/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(cfg["target_size"], 640, "the published 480p target size");
    cfg["target_size"] = 128.into();
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

#[test]
fn a_make_model_hv15_i2v_folder_generates_on_two_workers_as_planned() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hv15-i2v");
    let o = run(tessera().args(["make-model", "--arch", "hv15-480p-i2v", "--layers", "1", "--out"]).arg(&model));
    assert!(o.status.success(), "{}", error_line(&o));
    for f in
        ["image_encoder/config.json", "image_encoder/model.safetensors", "feature_extractor/preprocessor_config.json"]
    {
        assert!(model.join(f).is_file(), "make-model wrote no {f}");
    }
    // One SigLIP layer of 27: the embeddings, one layer and the post norm (21 tensors), and the
    // pooling head (11) the published file has.
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(said.contains("image_encoder: 32 tensors, 31998496 parameters"), "{said}");
    small_buckets(&model);
    let embeds = tmp.path().join("embeds.safetensors");
    write_embeds(&embeds);
    let image = tmp.path().join("first.png");
    write_image(&image);

    let mut rows = Vec::new();
    for (label, plan) in PLANS {
        let report = tmp.path().join("report.json");
        let video = tmp.path().join("video.safetensors");
        let o = run(tessera()
            .args(["generate", "--model"])
            .arg(&model)
            .arg("--image")
            .arg(&image)
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
            .arg("--image")
            .arg(&image)
            .args(SIZE)
            .args(plan)
            .args(["--device", "cpu", "--json"]));
        assert!(o.status.success(), "{label}: {}", error_line(&o));
        let predicted = peaks(&serde_json::from_slice(&o.stdout).unwrap());
        rows.extend(peaks::rows(label, &predicted, &measured));
    }
    assert!(rows.iter().any(|r| r.phase == "encode_image" && r.rank == 1), "halo: rank 1 encodes a slab");
    peaks::check(&rows);
}
