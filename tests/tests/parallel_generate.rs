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
            // reductions (gathered weights are bit-identical, the 12/36-token sequences are
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
    // Request sizes too, against the model's VAE and patch, before the workers start.
    let line = rejected(&["--ulysses", "2", "--width", "120"]);
    assert!(line.contains("--width 120 is not a multiple of 32 for this model; nearest valid: 96 or 128"), "{line}");
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

/// Tiles-mode VAE in the same world: the tiles decoded over 2 ranks give the same video as the
/// tiled decode on rank 0 alone (the tile-parallel decode is bit-identical to single-device tiling).
#[test]
fn tiles_mode_vae_in_the_generate_world() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case_dir("golden", "pipeline");
    let tiles = ["--cfg-parallel", "2", "--vae-mode", "tiles", "--tiling", "64,64,32,32"];
    let (one, two) = (tmp.path().join("v1.safetensors"), tmp.path().join("v2.safetensors"));
    let o = generate(&dir, &one, &[&tiles[..], &["--vae-parallel", "1"]].concat());
    assert!(o.status.success(), "{}", error_line(&o));
    let o = generate(&dir, &two, &[&tiles[..], &["--vae-parallel", "2"]].concat());
    assert!(o.status.success(), "{}", error_line(&o));
    let (max, rel) = errors(&video(&two), &video(&one));
    println!("tiles over 2 ranks vs rank 0 alone: max_abs {max:.2e} rel {rel:.2e}");
    assert_eq!(max, 0.0);
    // The tiling really ran: blended 64-px tiles of the tiny random VAE are not the untiled video.
    let (_, grel) = errors(&video(&two), &video(&dir.join("outputs.safetensors")));
    println!("tiled (64-px tiles) vs untiled diffusers video: rel {grel:.2e}");
    assert!(grel > 1e-3, "--tiling had no effect (rel {grel:.2e})");
}

/// `--text-encoder-on sharded`: the same world first encodes the prompts (UMT5 split by layer, the
/// golden 32-dim encoder beside the golden pipeline) and then denoises; the video equals the run
/// that encodes on the host (separate, empty prompt caches, so both really encode).
#[test]
fn sharded_text_encoder_in_the_generate_world() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("pipeline-with-text");
    std::fs::create_dir(&model).unwrap();
    let pipeline = case_dir("golden", "pipeline");
    for part in ["model_index.json", "scheduler", "transformer", "vae"] {
        std::os::unix::fs::symlink(pipeline.join(part), model.join(part)).unwrap();
    }
    for part in ["text_encoder", "tokenizer"] {
        std::os::unix::fs::symlink(case_dir("golden", "prompt").join(part), model.join(part)).unwrap();
    }
    let gen = |out: &Path, cache: &str, extra: &[&str]| {
        let mut cmd = tessera();
        cmd.env("TESSERA_CACHE_DIR", tmp.path().join(cache)).arg("generate").arg("--model").arg(&model);
        cmd.args(["--prompt", "A white cat wearing sunglasses", "--negative-prompt", "blurry"]);
        cmd.args(["--height", "64", "--width", "64", "--frames", "5", "--steps", "2", "--guidance", "4"]);
        cmd.arg("--out").arg(out).args(extra);
        let o = run(&mut cmd);
        assert!(o.status.success(), "{extra:?}: {}", error_line(&o));
    };
    let (host, sharded) = (tmp.path().join("host.safetensors"), tmp.path().join("sharded.safetensors"));
    gen(&host, "cache-host", &[]);
    let report = tmp.path().join("report.json");
    gen(
        &sharded,
        "cache-sharded",
        &["--ulysses", "2", "--text-encoder-on", "sharded", "--report", report.to_str().unwrap()],
    );
    let (max, rel) = errors(&video(&sharded), &video(&host));
    println!("sharded text encoder + Ulysses 2 vs host encoder on one device: max_abs {max:.2e} rel {rel:.2e}");
    assert!(rel <= 1e-4, "rel {rel:.2e}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    for rank in r["ranks"].as_array().unwrap() {
        assert!(rank["text_encoder_weights_bytes"].as_u64().unwrap() > 0, "{rank}");
        let phases: Vec<&str> =
            rank["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(phases.contains(&"text_encode") && phases.contains(&"denoise"), "{phases:?}");
    }
}

/// Two experts (A14B-style switch at `boundary_ratio`, `--guidance-2`), both FSDP-sharded: a copy
/// of the golden pipeline with a `transformer_2` whose weights are the first expert's × 0.9. The
/// sharded runs equal the single-device run, which differs from the one-expert run (the switch
/// happened), and each rank keeps a quarter of both experts' blocks under FSDP 4.
#[test]
fn two_experts_both_sharded() {
    let tmp = tempfile::tempdir().unwrap();
    let src = case_dir("golden", "pipeline");
    let model = tmp.path().join("two-experts");
    std::fs::create_dir(&model).unwrap();
    for part in ["scheduler", "transformer", "vae", "case.json", "inputs.safetensors", "outputs.safetensors"] {
        std::os::unix::fs::symlink(src.join(part), model.join(part)).unwrap();
    }
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model_index.json")).unwrap()).unwrap();
    index["boundary_ratio"] = 0.9.into(); // timesteps 999, 937, 833, 625 (flow shift 5): two per expert
    index["transformer_2"] = serde_json::json!(["diffusers", "WanTransformer3DModel"]);
    std::fs::write(model.join("model_index.json"), index.to_string()).unwrap();
    let t2 = model.join("transformer_2");
    std::fs::create_dir(&t2).unwrap();
    std::fs::copy(src.join("transformer/config.json"), t2.join("config.json")).unwrap();
    let weights =
        tensor_io::read_all(&src.join("transformer/diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    let scaled: Vec<(String, Tensor)> = weights.into_iter().map(|(k, v)| (k, (v * 0.9).unwrap())).collect();
    let refs: Vec<(&str, Tensor)> = scaled.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    tensor_io::write_atomic(&t2.join("diffusion_pytorch_model.safetensors"), &refs).unwrap();

    let g2 = ["--guidance-2", "3"];
    let single = tmp.path().join("single.safetensors");
    let o = generate(&model, &single, &g2);
    assert!(o.status.success(), "{}", error_line(&o));
    let (_, vs_one_expert) = errors(&video(&single), &video(&src.join("outputs.safetensors")));
    println!("two experts vs the one-expert golden video: rel {vs_one_expert:.2e}");
    assert!(vs_one_expert > 1e-3, "the low-noise expert was not used");
    for plan in [&["--cfg-parallel", "2", "--fsdp", "2"][..], &["--ulysses", "2", "--cfg-parallel", "2", "--fsdp", "4"]]
    {
        let out = tmp.path().join("sharded.safetensors");
        let report = tmp.path().join("report.json");
        let flags = [plan, &g2, &["--report", report.to_str().unwrap()]].concat();
        let o = generate(&model, &out, &flags);
        assert!(o.status.success(), "{plan:?}: {}", error_line(&o));
        let (max, rel) = errors(&video(&out), &video(&single));
        println!("two experts {}: vs single device max_abs {max:.2e} rel {rel:.2e}", plan.join(" "));
        assert!(rel <= 1e-4, "{plan:?}: rel {rel:.2e}");
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let f = r["plan"]["fsdp"].as_u64().unwrap();
        for rank in r["ranks"].as_array().unwrap() {
            let d = &rank["denoise"];
            let (mine, block) = (d["transformer_bytes"].as_u64().unwrap(), d["block_bytes"].as_u64().unwrap());
            // Per expert: stem + ⌈2 blocks / F⌉ (+ ≤ F−1 padding elements per tensor); two experts.
            let stem = 306_112 - 2 * block;
            assert!(mine <= 2 * (stem + 2 * block / f + 4096), "rank {}: {mine} B", rank["rank"]);
        }
    }
}

/// `--preset`: the plan comes from the preset file, explicit flags override it field by field.
#[test]
fn preset_supplies_the_plan_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let preset = tmp.path().join("u2c2.toml");
    std::fs::write(&preset, "# Test preset.\n[plan]\nranks = 4\nulysses = 2\ncfg_parallel = 2\nfsdp = 4\n").unwrap();
    let dir = case_dir("golden", "pipeline");
    let golden = video(&dir.join("outputs.safetensors"));
    for (name, extra) in [("preset", &[][..]), ("override", &["--fsdp", "2"][..])] {
        let (out, report) = (tmp.path().join(format!("{name}.safetensors")), tmp.path().join(format!("{name}.json")));
        let flags = [&["--preset", preset.to_str().unwrap(), "--report", report.to_str().unwrap()][..], extra].concat();
        let o = generate(&dir, &out, &flags);
        assert!(o.status.success(), "{name}: {}", error_line(&o));
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!((r["plan"]["ranks"].as_u64(), r["plan"]["ulysses"].as_u64()), (Some(4), Some(2)));
        assert_eq!(r["plan"]["fsdp"].as_u64(), Some(if name == "preset" { 4 } else { 2 }));
        let (_, rel) = errors(&video(&out), &golden);
        assert!(rel <= 1e-3, "{name}: rel {rel:.2e}");
    }
    let line = rejected(&["--preset", preset.to_str().unwrap(), "--ulysses", "4"]);
    assert!(line.contains("≠ --ranks 4"), "{line}");
}

/// `--preset`: the CPU demo preset's plan (Ulysses 2, halo VAE over 2 ranks) runs the golden
/// pipeline and equals the single-device run; a flag given beside it overrides its field.
#[test]
fn presets_drive_the_parallel_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case_dir("golden", "pipeline");
    let preset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../presets/cpu-demo.toml");
    let single = tmp.path().join("single.safetensors");
    assert!(generate(&dir, &single, &[]).status.success());
    let report = tmp.path().join("report.json");
    let out = tmp.path().join("preset.safetensors");
    let o = generate(
        &dir,
        &out,
        &["--preset", preset.to_str().unwrap(), "--vae-parallel", "1", "--report", report.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", error_line(&o));
    let (max, rel) = errors(&video(&out), &video(&single));
    println!("cpu-demo preset vs single device: max_abs {max:.2e} rel {rel:.2e}");
    assert!(rel <= 1e-4);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["plan"]["ulysses"], 2, "the preset's Ulysses degree");
    assert_eq!(r["plan"]["vae_parallel"], 1, "the explicit flag wins over the preset");
    // A broken preset names the key.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[plan]\nranks = 2\nulysess = 2\n").unwrap();
    let o = generate(&dir, &tmp.path().join("x.safetensors"), &["--preset", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(error_line(&o).contains("ulysess"), "{}", error_line(&o));
}
