//! `tessera generate` on worker processes (CPU ranks over the socket mesh) under the parallel plans
//! of issue 7: Ulysses 2, CFG 2, Ulysses 2 × CFG 2, CFG 2 + FSDP 2, Ulysses 2 × CFG 2 + FSDP 4,
//! Ulysses 2 + FSDP 2 + halo VAE 2, on both golden sets' text- and image-to-video pipelines. Each
//! video must equal diffusers' (≤ 1e-3 relative) and the single-device run (≤ 1e-4). Invalid
//! plans fail before any worker starts, with an error naming a valid plan; `--report` carries the
//! per-rank denoise statistics.

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use tessera_e2e::{error_line, errors, run, tessera};
use tessera_engine::tensor_io;

/// The plans of the issue. The golden transformers have 4 heads, so Ulysses 2 divides them.
const PLANS: [&[&str]; 6] = [
    &["--ulysses", "2"],
    &["--cfg-parallel", "2"],
    &["--ulysses", "2", "--cfg-parallel", "2"],
    &["--cfg-parallel", "2", "--fsdp", "2"],
    &["--ulysses", "2", "--cfg-parallel", "2", "--fsdp", "4"],
    &["--ulysses", "2", "--fsdp", "2", "--vae-parallel", "2", "--vae-mode", "halo"],
];

fn case_dir(set: &str, case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(set).join(case)
}

fn video(path: &Path) -> Tensor {
    tensor_io::read_tensor(path, "video", candle_core::DType::F32, &Device::Cpu).unwrap()
}

/// `tessera generate` on a golden case with its inputs and settings; `extra` (flag, value pairs)
/// replaces or adds flags.
fn generate(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let inputs = dir.join("inputs.safetensors").to_string_lossy().into_owned();
    let mut flags: Vec<(String, String)> = vec![
        ("--model".into(), dir.to_string_lossy().into_owned()),
        ("--prompt-embeds".into(), inputs.clone()),
        ("--negative-prompt-embeds".into(), inputs.clone()),
        ("--latents".into(), inputs),
        ("--out".into(), out.to_string_lossy().into_owned()),
    ];
    for (flag, key) in [
        ("--height", "height"),
        ("--width", "width"),
        ("--frames", "num_frames"),
        ("--steps", "num_inference_steps"),
        ("--guidance", "guidance_scale"),
    ] {
        flags.push((flag.into(), case[key].to_string()));
    }
    if let Some(image) = case["image"].as_str() {
        flags.push(("--image".into(), dir.join(image).to_string_lossy().into_owned()));
    }
    assert!(extra.len().is_multiple_of(2), "extra flags come in pairs: {extra:?}");
    for pair in extra.chunks(2) {
        match flags.iter_mut().find(|(f, _)| f == pair[0]) {
            Some(slot) => slot.1 = pair[1].to_string(),
            None => flags.push((pair[0].to_string(), pair[1].to_string())),
        }
    }
    let mut cmd = tessera();
    cmd.arg("generate");
    for (k, v) in &flags {
        cmd.arg(k).arg(v);
    }
    run(&mut cmd)
}

fn parity_on(set: &str) {
    let tmp = tempfile::tempdir().unwrap();
    for case in ["pipeline", "pipeline_i2v"] {
        let dir = case_dir(set, case);
        let golden = video(&dir.join("outputs.safetensors"));
        let single_path = tmp.path().join(format!("{case}-single.safetensors"));
        let o = generate(&dir, &single_path, &[]);
        assert!(o.status.success(), "{set}/{case} single: {}", error_line(&o));
        let single = video(&single_path);
        for plan in PLANS {
            let out = tmp.path().join(format!("{case}-{}.safetensors", plan.join("_").replace("--", "")));
            let o = generate(&dir, &out, plan);
            assert!(o.status.success(), "{set}/{case} {plan:?}: {}", error_line(&o));
            let got = video(&out);
            let (gmax, grel) = errors(&got, &golden);
            let (smax, srel) = errors(&got, &single);
            println!(
                "{set}/{case} {}: vs diffusers max_abs {gmax:.2e} rel {grel:.2e}; vs single device max_abs {smax:.2e} rel {srel:.2e}",
                plan.join(" ")
            );
            // The bars. Sharding changes no arithmetic except the order of a few
            // reductions (gathered weights are bit-identical, the 24/36-token sequences are
            // one attention block either way), so the single-device distance is ~0.
            assert!(grel <= 1e-3, "{set}/{case} {plan:?}: rel {grel:.2e} vs diffusers");
            assert!(srel <= 1e-4, "{set}/{case} {plan:?}: rel {srel:.2e} vs single device");
        }
    }
}

#[test]
fn golden_pipelines_under_every_plan() {
    parity_on("golden");
}

#[test]
fn odd_shaped_golden_pipelines_under_every_plan() {
    parity_on("golden-seed1");
}

/// Runs a plan that must be rejected; returns the one error line. No output file may appear.
fn rejected(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let o = generate(&case_dir("golden", "pipeline"), &out, extra);
    assert!(!o.status.success(), "{extra:?} must fail");
    assert!(!out.exists());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("[rank"), "rejected before any worker starts: {stderr}");
    error_line(&o)
}

#[test]
fn invalid_plans_are_rejected_up_front_with_a_valid_plan() {
    let line = rejected(&["--ulysses", "3"]);
    assert!(line.contains("does not divide the model's 4 attention heads") && line.contains("[1, 2]"), "{line}");
    let line = rejected(&["--ranks", "4", "--ulysses", "2"]);
    assert!(line.contains("try --ulysses 2 --cfg-parallel 2"), "{line}");
    let line = rejected(&["--ranks", "2", "--fsdp", "3"]);
    assert!(line.contains("--fsdp 3 does not divide --ranks 2; valid: [1, 2]"), "{line}");
    let line = rejected(&["--ulysses", "2", "--vae-parallel", "3"]);
    assert!(line.contains("--vae-parallel 3 must be between 1 and --ranks 2"), "{line}");
    let line = rejected(&["--cfg-parallel", "2", "--guidance", "1"]);
    assert!(line.contains("needs classifier-free guidance"), "{line}");
    let line = rejected(&["--ulysses", "2", "--vae-mode", "halo", "--tiling", "256,256,192,192"]);
    assert!(line.contains("drop --tiling"), "{line}");
}

/// `--report`: every rank reports its resident weights, step times and time in collectives; with
/// FSDP 4 each rank keeps under half the blocks' bytes of an unsharded rank (¼ of every block,
/// plus the replicated stem).
#[test]
fn report_has_per_rank_denoise_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case_dir("golden", "pipeline");
    let read = |plan: &[&str], name: &str| -> serde_json::Value {
        let (out, report) = (tmp.path().join(format!("{name}.safetensors")), tmp.path().join(format!("{name}.json")));
        let mut flags = plan.to_vec();
        flags.extend(["--report", report.to_str().unwrap()]);
        let o = generate(&dir, &out, &flags);
        assert!(o.status.success(), "{}", error_line(&o));
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
    };
    let full = read(&["--ulysses", "2"], "u2");
    let sharded = read(&["--ulysses", "2", "--cfg-parallel", "2", "--fsdp", "4"], "u2c2f4");
    assert_eq!(sharded["plan"]["fsdp"], 4);
    let ranks = sharded["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 4);
    let unsharded = full["ranks"][0]["denoise"]["transformer_bytes"].as_u64().unwrap();
    let block = full["ranks"][0]["denoise"]["block_bytes"].as_u64().unwrap();
    for r in ranks {
        let d = &r["denoise"];
        let mine = d["transformer_bytes"].as_u64().unwrap();
        println!(
            "rank {}: transformer {mine} B (unsharded {unsharded} B, block {block} B), steps {:?}, comm share {:.3}",
            r["rank"],
            d["step_seconds"],
            d["comm_share"].as_f64().unwrap()
        );
        // Stem replicated + ¼ of the 2 blocks (+ padding of ≤ 3 elements per tensor).
        let stem = unsharded - 2 * block;
        assert!(mine <= stem + 2 * block / 4 + 4096, "rank {}: {mine} B resident", r["rank"]);
        assert_eq!(d["step_seconds"].as_array().unwrap().len(), 4);
        let share = d["comm_share"].as_f64().unwrap();
        assert!(share > 0.0 && share < 1.0, "comm share {share}");
        assert!(d["comm_calls"].as_u64().unwrap() > 0);
        let phases: Vec<&str> = r["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        for want in ["load", "denoise", "decode"] {
            assert!(phases.contains(&want), "rank {} phases {phases:?}", r["rank"]);
        }
    }
}

/// Tiles-mode VAE over 2 ranks inside `generate` is bit-identical to the same run decoding its tiles
/// on rank 0 alone (tiles mode's contract), and the pieces come from both ranks.
#[test]
fn tiles_vae_inside_generate_equals_the_single_rank_tiled_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case_dir("golden", "pipeline");
    let tiling = ["--vae-mode", "tiles", "--tiling", "64,64,32,32", "--cfg-parallel", "2"];
    let one = tmp.path().join("vae1.safetensors");
    let mut flags = tiling.to_vec();
    flags.extend(["--vae-parallel", "1"]);
    assert!(generate(&dir, &one, &flags).status.success());
    let two = tmp.path().join("vae2.safetensors");
    let mut flags = tiling.to_vec();
    flags.extend(["--vae-parallel", "2"]);
    let o = generate(&dir, &two, &flags);
    assert!(o.status.success(), "{}", error_line(&o));
    let (a, b) = (video(&one), video(&two));
    let same = a.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(same, "tiles VAE on 2 ranks differs from the tiled decode on rank 0");
    let (max, rel) = errors(&b, &video(&dir.join("outputs.safetensors")));
    println!(
        "tiles VAE x2 inside generate: bit-identical to 1 rank; vs untiled diffusers max_abs {max:.2e} rel {rel:.2e}"
    );
}

/// `--text-encoder sharded`: the prompts are encoded by UMT5 split over the generate job's own
/// workers, and the video equals the host-encoded (`--text-encoder cpu`) run.
#[test]
fn sharded_text_encoder_inside_generate_equals_the_host_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    // A pipeline folder with the golden prompt case's tokenizer and UMT5 (text_dim 32 = d_model).
    let model = tmp.path().join("model");
    copy_dir(&case_dir("golden", "pipeline"), &model);
    for part in ["text_encoder", "tokenizer"] {
        copy_dir(&case_dir("golden", "prompt").join(part), &model.join(part));
    }
    let cache = tmp.path().join("cache");
    let mut outs = Vec::new();
    for placement in ["cpu", "sharded"] {
        let out = tmp.path().join(format!("{placement}.safetensors"));
        let o = run(tessera()
            .env("TESSERA_CACHE_DIR", &cache)
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--prompt", "a cat on a surfboard", "--negative-prompt", "blurry"])
            .args(["--height", "96", "--width", "128", "--frames", "9", "--steps", "2", "--guidance", "5"])
            .args(["--ranks", "2", "--cfg-parallel", "2", "--text-encoder", placement, "--out"])
            .arg(&out));
        assert!(o.status.success(), "{placement}: {}", error_line(&o));
        outs.push(video(&out));
        // Fresh cache per placement: the second run must really run the sharded encoder.
        let _ = std::fs::remove_dir_all(&cache);
    }
    let (max, rel) = errors(&outs[1], &outs[0]);
    println!("generate with the sharded text encoder vs the host encoder: max_abs {max:.2e} rel {rel:.2e}");
    assert!(rel <= 1e-5);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
