//! `tessera plan` through the real binary: the per-rank JSON shaped like the run report, the fit
//! verdict and the suggested plan, presets, and bad input as one clear error line.

use std::path::PathBuf;

use tessera_e2e::{error_line, run, tessera};

fn configs(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/configs").join(name)
}

fn presets(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../presets").join(name)
}

fn plan_json(args: &[&str], model: &str) -> serde_json::Value {
    let out = run(tessera().args(["plan", "--model"]).arg(configs(model)).args(args).arg("--json"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn json_has_a_row_per_rank_with_report_shaped_phases() {
    let args = ["--height", "704", "--width", "1280", "--frames", "121", "--ranks", "2", "--gpus", "2x24GB"];
    let v = plan_json(&args, "wan2.2-ti2v-5b");
    let ranks = v["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2);
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r["rank"], i);
        let peak = r["peak_bytes"].as_u64().unwrap();
        let phases = r["phases"].as_array().unwrap();
        let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["load", "denoise", "decode"], "the generate job's phases");
        let max = phases.iter().map(|p| p["peak_bytes"].as_u64().unwrap()).max().unwrap();
        assert_eq!(peak, max, "a rank's peak is its largest phase");
    }
    // An untiled decode of 121 frames of 1280×704 in two row slabs (19 GB of working set per GPU
    // next to the decoder) does not fit 24 GB; the planner proposes the cheapest change that does.
    assert_eq!(v["fits"], false);
    let s = &v["suggestion"];
    assert!(!s["flags"].as_array().unwrap().is_empty(), "{s}");
    let usable = v["usable_bytes_per_gpu"].as_u64().unwrap();
    assert!(s["ranks"].as_array().unwrap().iter().all(|r| r["peak_bytes"].as_u64().unwrap() <= usable));
}

#[test]
fn presets_load_and_fit() {
    let v = plan_json(&["--preset", presets("t2v-a14b-720p-8x4090.toml").to_str().unwrap()], "wan2.2-t2v-a14b");
    assert_eq!(v["fits"], true, "{v}");
    assert_eq!(v["plan"]["fsdp"], 8);
    assert_eq!(v["request"]["frames"], 81);
    // An explicit flag overrides the preset: no FSDP no longer fits 24 GB GPUs.
    let v = plan_json(
        &["--preset", presets("t2v-a14b-720p-8x4090.toml").to_str().unwrap(), "--fsdp", "1"],
        "wan2.2-t2v-a14b",
    );
    assert_eq!(v["fits"], false);
    assert_eq!(v["plan"]["fsdp"], 1);
    // The preset names GPUs, so it plans CUDA workers; an explicit --device cpu plans CPU workers
    // with the preset's layout (and does not check the GPUs it names).
    let preset = presets("t2v-a14b-720p-8x4090.toml");
    let v = plan_json(&["--preset", preset.to_str().unwrap()], "wan2.2-t2v-a14b");
    assert_eq!(v["device"], "cuda", "{v}");
    let v = plan_json(&["--preset", preset.to_str().unwrap(), "--device", "cpu"], "wan2.2-t2v-a14b");
    assert_eq!(
        (&v["device"], &v["gpus"], &v["fits"]),
        (&"cpu".into(), &serde_json::Value::Null, &serde_json::Value::Null),
        "{v}"
    );
    assert_eq!(v["plan"]["fsdp"], 8);
}

#[test]
fn table_names_what_dominates() {
    let out = run(tessera()
        .args(["plan", "--model"])
        .arg(configs("wan2.2-i2v-a14b"))
        .args(["--height", "720", "--width", "1280", "--frames", "81", "--guidance", "3.5", "--image", "in.png"])
        .args(["--gpus", "1x24GB"]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("encode_image") && text.contains("dominated by"), "{text}");
    assert!(text.contains("does NOT fit 1x24GB"), "{text}");
}

#[test]
fn bad_input_is_one_clear_line() {
    let cases: [(&[&str], &str); 5] = [
        (&["--height", "700", "--width", "1280", "--frames", "121"], "nearest valid"),
        (&["--height", "704", "--width", "1280", "--frames", "121", "--ranks", "5", "--ulysses", "5"], "heads"),
        (&["--height", "704", "--width", "1280", "--frames", "121", "--gpus", "lots"], "COUNTxSIZE"),
        (&["--width", "1280", "--frames", "121"], "--height is required"),
        (&["--height", "704", "--width", "1280", "--frames", "121", "--gpus", "2x24GB", "--device", "cpu"], "drop one"),
    ];
    for (args, needle) in cases {
        let out = run(tessera().args(["plan", "--model"]).arg(configs("wan2.2-ti2v-5b")).args(args));
        assert!(!out.status.success(), "{args:?} should fail");
        // clap's own errors (a bad --gpus value) end with a usage hint line; ours are one line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(line.contains(needle), "{args:?}: {stderr}");
    }
    let out =
        run(tessera().args(["plan", "--model", "/nonexistent", "--height", "704", "--width", "1280", "--frames", "5"]));
    assert!(error_line(&out).contains("model folder not found: /nonexistent"), "{}", error_line(&out));
}

/// Any complete `generate` command line is a `plan` command line: prompts, seeds, outputs and
/// reports are accepted (and do not change the prediction).
#[test]
fn a_generate_command_line_plans_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let generate_flags: Vec<String> = [
        "--prompt",
        "a lighthouse at dusk",
        "--negative-prompt",
        "blurry",
        "--height",
        "704",
        "--width",
        "1280",
        "--frames",
        "121",
        "--steps",
        "40",
        "--guidance",
        "5",
        "--seed",
        "7",
        "--ulysses",
        "2",
        "--fsdp",
        "2",
        "--vae-parallel",
        "2",
        "--vae-mode",
        "halo",
        "--text-encoder-on",
        "sharded",
        "--fps",
        "24",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--out".into(), tmp.path().join("v.mp4").display().to_string()])
    .chain(["--report".into(), tmp.path().join("r.json").display().to_string()])
    .chain(["--save-latents".into(), tmp.path().join("l.safetensors").display().to_string()])
    .collect();
    let out =
        run(tessera().args(["plan", "--model"]).arg(configs("wan2.2-ti2v-5b")).args(&generate_flags).arg("--json"));
    assert!(out.status.success(), "{}", error_line(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plan"]["ulysses"], 2);
    assert_eq!(v["ranks"].as_array().unwrap().len(), 2);
    assert!(!tmp.path().join("v.mp4").exists(), "plan writes nothing");
}
