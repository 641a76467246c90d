//! `tessera generate` and `make-model --arch <pipeline>` through the real binary: golden parity of
//! the CLI contract (text-to-video and image-to-video, both golden sets), validation errors as one
//! line naming the nearest valid values, MP4 output read back by ffprobe, and make-model pipeline
//! folders that load and generate end to end.

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use tessera_e2e::{error_line, errors, run, tessera};
use tessera_engine::tensor_io;
use tessera_engine::weights::Checkpoint;

/// A case folder of one of the two golden sets (`golden/` and the odd-shaped `golden-seed1/`).
fn case_dir(set: &str, case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(set).join(case)
}

fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    tensor_io::read_all(path, &Device::Cpu).unwrap()
}

fn case_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap()
}

/// `tessera generate` on a golden case folder with its inputs and settings. `set` replaces (or,
/// for a new flag, adds) flag values; an empty value drops the flag.
fn generate_golden(dir: &Path, out: &Path, set: &[(&str, &str)]) -> Output {
    let case = case_json(dir);
    let num = |k: &str| case[k].to_string();
    let inputs = dir.join("inputs.safetensors").to_string_lossy().into_owned();
    let mut flags: Vec<(String, String)> = [
        ("--model", dir.to_string_lossy().into_owned()),
        ("--prompt-embeds", inputs.clone()),
        ("--negative-prompt-embeds", inputs.clone()),
        ("--latents", inputs),
        ("--height", num("height")),
        ("--width", num("width")),
        ("--frames", num("num_frames")),
        ("--steps", num("num_inference_steps")),
        ("--guidance", num("guidance_scale")),
        ("--out", out.to_string_lossy().into_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(image) = case["image"].as_str() {
        flags.push(("--image".into(), dir.join(image).to_string_lossy().into_owned()));
    }
    for (k, v) in set {
        match flags.iter_mut().find(|(f, _)| f == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => flags.push((k.to_string(), v.to_string())),
        }
    }
    let mut cmd = tessera();
    cmd.arg("generate");
    for (k, v) in flags.iter().filter(|(_, v)| !v.is_empty()) {
        cmd.arg(k).arg(v);
    }
    run(&mut cmd)
}

#[test]
fn golden_pipelines_match_diffusers_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    for set in ["golden", "golden-seed1"] {
        for case in ["pipeline", "pipeline_i2v"] {
            let dir = case_dir(set, case);
            let out = tmp.path().join(format!("{set}-{case}.safetensors"));
            let lat = tmp.path().join(format!("{set}-{case}-latents.safetensors"));
            let o = generate_golden(&dir, &out, &[("--save-latents", lat.to_str().unwrap())]);
            assert!(o.status.success(), "{set}/{case}: {}", error_line(&o));
            let want = read(&dir.join("outputs.safetensors"));
            let (max, rel) = errors(&read(&out)["video"], &want["video"]);
            println!("{set}/{case} cli video: max_abs {max:.2e} rel {rel:.2e}");
            // The bar for the whole pipeline in f32 (4 UniPC steps with CFG and a VAE
            // decode, each ~1e-5 relative); the port lands near 1e-6.
            assert!(rel <= 1e-3, "{set}/{case}: video rel {rel:.2e}");
            if let Some(final_latents) = want.get("final_latents") {
                let (max, rel) = errors(&read(&lat)["latents"], final_latents);
                println!("{set}/{case} cli final latents: max_abs {max:.2e} rel {rel:.2e}");
                assert!(rel <= 1e-3, "{set}/{case}: latents rel {rel:.2e}");
            }
        }
    }
}

/// Runs `tessera generate` on the golden pipeline expecting failure; returns the error line. The
/// output must not exist and no temporary file may be left beside it.
fn generate_fails(set: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let o = generate_golden(&case_dir("golden", "pipeline"), &out, set);
    assert!(!o.status.success(), "expected failure with {set:?}");
    assert!(!out.exists(), "a failed run must not leave an output file");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temporary files left behind");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = error_line(&o);
    assert!(line.starts_with("error: "), "one error line expected, got {line:?}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "exactly one error line: {stderr}");
    line
}

#[test]
fn bad_requests_are_one_error_line_with_the_nearest_valid_values() {
    let line = generate_fails(&[("--frames", "8")]);
    assert!(line.contains("--frames 8 is not of the form 4k+1; nearest valid: 5 or 9"), "{line}");
    let line = generate_fails(&[("--frames", "0")]);
    assert!(line.contains("nearest valid: 1 or 5"), "{line}");
    // The golden pipeline has the Wan2.2 VAE (16×) and a 2×2 patch: sizes are multiples of 32.
    let line = generate_fails(&[("--height", "100")]);
    assert!(line.contains("--height 100 is not a multiple of 32 for this model; nearest valid: 96 or 128"), "{line}");
    let line = generate_fails(&[("--width", "136")]);
    assert!(line.contains("--width 136 is not a multiple of 32 for this model; nearest valid: 128 or 160"), "{line}");

    // Missing embeddings: a file without the tensor, and CFG without a negative prompt on a folder
    // that has no text encoder to make one.
    let outputs = case_dir("golden", "pipeline").join("outputs.safetensors");
    let line = generate_fails(&[("--prompt-embeds", outputs.to_str().unwrap())]);
    assert!(line.contains("prompt_embeds"), "{line}");
    let line = generate_fails(&[("--negative-prompt-embeds", "")]);
    assert!(line.contains("--negative-prompt-embeds"), "{line}");
    // Without CFG no negative prompt is needed: the same request then runs.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("no-cfg.safetensors");
    let o = generate_golden(
        &case_dir("golden", "pipeline"),
        &out,
        &[("--negative-prompt-embeds", ""), ("--guidance", "1"), ("--steps", "1")],
    );
    assert!(o.status.success() && out.is_file(), "{}", error_line(&o));

    // Initial noise of the wrong size for the request.
    let line = generate_fails(&[("--height", "64")]);
    assert!(line.contains("--latents has shape [1, 8, 3, 6, 8], this size needs [1, 8, 3, 4, 8]"), "{line}");
}

/// `(frames, width, height, codec)` of the first video stream as ffprobe decodes it. ffprobe is
/// required (`.ci/run` installs Debian's ffmpeg): a missing one fails the test, never skips it.
fn ffprobe(path: &Path) -> (usize, usize, usize, String) {
    let o = match std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames,width,height,codec_name", "-of", "json"])
        .arg(path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("ffprobe is not installed: the MP4 check needs it (Debian: apt-get install ffmpeg)")
        }
        Err(e) => panic!("running ffprobe: {e}"),
    };
    assert!(o.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["streams"][0];
    let frames = s["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).expect("nb_read_frames");
    let dim = |k: &str| s[k].as_u64().expect("width/height") as usize;
    (frames, dim("width"), dim("height"), s["codec_name"].as_str().unwrap_or("").to_string())
}

#[test]
fn mp4_and_png_outputs_have_every_frame() {
    let tmp = tempfile::tempdir().unwrap();
    // golden-seed1 is portrait (64 wide, 96 high) and 5 frames; golden is 128×96, 9 frames.
    for (set, frames, width, height) in [("golden", 9, 128, 96), ("golden-seed1", 5, 64, 96)] {
        let mp4 = tmp.path().join(format!("{set}.mp4"));
        let o = generate_golden(&case_dir(set, "pipeline"), &mp4, &[]);
        assert!(o.status.success(), "{}", error_line(&o));
        assert!(std::fs::metadata(&mp4).unwrap().len() > 0);
        let (f, w, h, codec) = ffprobe(&mp4);
        println!("{set}: ffprobe reads {f} frames of {w}×{h} ({codec})");
        assert_eq!((f, w, h), (frames, width, height));
        assert_eq!(codec, "h264");
    }
    let dir = tmp.path().join("frames/");
    let o = generate_golden(&case_dir("golden", "pipeline"), &dir, &[]);
    assert!(o.status.success(), "{}", error_line(&o));
    let mut pngs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), 9, "{pngs:?}");
}

/// `(1, len, 4096)` prompt and negative embeddings in one file, UMT5-like scale.
fn write_embeds(path: &Path, len: usize, text_dim: usize) {
    let dev = Device::Cpu;
    let p = (Tensor::randn(0f32, 1.0, (1, len, text_dim), &dev).unwrap() * 0.1).unwrap();
    let n = (Tensor::randn(0f32, 1.0, (1, len, text_dim), &dev).unwrap() * 0.1).unwrap();
    tensor_io::write_atomic(path, &[("prompt_embeds", p), ("negative_prompt_embeds", n)]).unwrap();
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Generates `frames` frames of 32×32 in 2 steps with CFG from a make-model folder; returns the
/// video. (32×32 and few frames: the real-width VAEs take most of the time on a CPU.)
fn generate_tiny(model: &Path, embeds: &Path, image: Option<&Path>, frames: usize, out: &Path) -> Tensor {
    let mut cmd = tessera();
    cmd.args(["generate", "--model"])
        .arg(model)
        .arg("--prompt-embeds")
        .arg(embeds)
        .arg("--negative-prompt-embeds")
        .arg(embeds)
        .args(["--height", "32", "--width", "32", "--frames", &frames.to_string(), "--steps", "2"])
        .args(["--guidance", "4", "--seed", "7"])
        .arg("--out")
        .arg(out);
    // The low-noise expert's scale exists only for two-expert (A14B) models, as in diffusers.
    if model.join("transformer_2").is_dir() {
        cmd.args(["--guidance-2", "3"]);
    }
    if let Some(image) = image {
        cmd.arg("--image").arg(image);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", error_line(&o));
    read(out)["video"].clone()
}

fn check_video(video: &Tensor, frames: usize) {
    assert_eq!(video.dims(), &[1, frames, 3, 32, 32]);
    let v = video.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)), "video in [0, 1]");
    let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    assert!(hi - lo > 1e-3, "video is not constant ({lo}..{hi})");
}

/// make-model with `--layers 1` (real widths, one block): the folder is what diffusers writes and
/// `tessera generate` runs it end to end. TI2V-5B then I2V-A14B (the two-expert, 36-channel,
/// Wan2.1-VAE path), one after the other: each is a few GB of random weights.
#[test]
fn make_model_pipelines_generate_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let embeds = tmp.path().join("embeds.safetensors");
    write_embeds(&embeds, 8, 4096);
    let image = case_dir("golden", "pipeline_i2v").join("image.png");

    let model = tmp.path().join("ti2v");
    let o = run(tessera().args(["make-model", "--arch", "wan2.2-ti2v-5b", "--layers", "1", "--out"]).arg(&model));
    assert!(o.status.success(), "{}", error_line(&o));
    let index = json(&model.join("model_index.json"));
    assert_eq!(index["_class_name"], "WanPipeline");
    assert_eq!(index["expand_timesteps"], true);
    assert_eq!(index["transformer_2"], serde_json::json!([null, null]));
    assert!(!model.join("transformer_2").exists());
    assert_eq!(json(&model.join("scheduler/scheduler_config.json"))["flow_shift"], 5.0);
    let t = json(&model.join("transformer/config.json"));
    assert_eq!((t["num_layers"].as_u64(), t["in_channels"].as_u64()), (Some(1), Some(48)));
    assert_eq!(json(&model.join("vae/config.json"))["z_dim"], 48);
    check_video(&generate_tiny(&model, &embeds, None, 1, &tmp.path().join("ti2v-t2v.safetensors")), 1);
    check_video(&generate_tiny(&model, &embeds, Some(&image), 5, &tmp.path().join("ti2v-i2v.safetensors")), 5);
    std::fs::remove_dir_all(&model).unwrap();

    let model = tmp.path().join("i2v-a14b");
    let o = run(tessera().args(["make-model", "--arch", "wan2.2-i2v-a14b", "--layers", "1", "--out"]).arg(&model));
    assert!(o.status.success(), "{}", error_line(&o));
    let index = json(&model.join("model_index.json"));
    assert_eq!(index["_class_name"], "WanImageToVideoPipeline");
    assert_eq!(index["boundary_ratio"], 0.9);
    assert_eq!(index["transformer_2"], serde_json::json!(["diffusers", "WanTransformer3DModel"]));
    assert_eq!(json(&model.join("scheduler/scheduler_config.json"))["flow_shift"], 3.0);
    assert_eq!(json(&model.join("transformer_2/config.json"))["in_channels"], 36);
    assert_eq!(json(&model.join("vae/config.json"))["z_dim"], 16);
    // The experts differ (a shared seed would make the expert switch invisible).
    // (mmap: one tensor, not the whole expert)
    let w = |dir: &str| {
        let vb = Checkpoint::open(&model.join(dir)).unwrap().var_builder(DType::F32, &Device::Cpu).unwrap();
        vb.get((16 * 4, 5120), "proj_out.weight").unwrap()
    };
    let (max, _) = errors(&w("transformer"), &w("transformer_2"));
    assert!(max > 0.0, "transformer_2 has the same weights as transformer");
    // With 2 steps at shift 3 the timesteps are 999 (high-noise expert) and 750 (< 900: low-noise).
    check_video(&generate_tiny(&model, &embeds, Some(&image), 5, &tmp.path().join("a14b-i2v.safetensors")), 5);
    // The A14B I2V transformer takes 36 channels: without an image it is a clear error.
    let o = run(tessera()
        .args(["generate", "--model"])
        .arg(&model)
        .arg("--prompt-embeds")
        .arg(&embeds)
        .arg("--negative-prompt-embeds")
        .arg(&embeds)
        .args(["--height", "32", "--width", "32", "--frames", "5", "--steps", "2", "--guidance", "4", "--out"])
        .arg(tmp.path().join("no-image.safetensors")));
    assert!(!o.status.success());
    assert!(error_line(&o).contains("pass --image"), "{}", error_line(&o));
}

/// A write that fails for real (the file-size limit, as a full disk would: `EFBIG` mid-file) leaves
/// the earlier output untouched and no partial or temporary file, and says why in one line.
#[test]
fn a_write_that_fails_mid_file_leaves_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    std::fs::write(&out, b"an earlier video").unwrap();
    let dir = case_dir("golden", "pipeline");
    let inputs = dir.join("inputs.safetensors");
    // The video tensor is 9 × 3 × 96 × 128 × 4 B ≈ 1.3 MB; the limit allows 256 KiB. SIGXFSZ is
    // ignored so the write returns EFBIG instead of killing the process (the workers write no file).
    let script = format!(
        "trap '' XFSZ; ulimit -f 256; exec {} generate --model {} --prompt-embeds {} --negative-prompt-embeds {} \
         --latents {} --height 96 --width 128 --frames 9 --steps 1 --guidance 5 --out {}",
        tessera_e2e::bin("tessera").display(),
        dir.display(),
        inputs.display(),
        inputs.display(),
        inputs.display(),
        out.display()
    );
    let o = run(std::process::Command::new("bash").args(["-c", &script]));
    assert!(!o.status.success(), "the write cannot have succeeded under a 256 KiB file-size limit");
    let line = error_line(&o);
    println!("{line}");
    assert!(line.contains(&out.display().to_string()), "the error names the output: {line}");
    assert_eq!(std::fs::read(&out).unwrap(), b"an earlier video", "the earlier output survives");
    let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "no partial or temporary file: {files:?}");
}
