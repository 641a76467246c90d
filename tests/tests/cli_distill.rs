//! The distilled recipe, live previews and settings metadata through the real binaries:
//! `tessera generate --scheduler euler --sigmas 1,0.75,0.5,0.25 --steps 4 --guidance 1` on two
//! worker processes (Ulysses 2) with `--preview-dir`, the MP4 read back by ffprobe and by
//! `tessera info`, PNG frames carrying the same settings, and CFG parallel refused at guidance 1.

use std::path::{Path, PathBuf};

use tessera_e2e::{error_line, golden, run, tessera};

/// `tessera generate` on the golden TI2V-style pipeline with the 4-step distilled recipe on the
/// `plan` flags' workers, plus `extra` flags.
fn generate(out: &Path, plan: &[&str], extra: &[&str]) -> std::process::Output {
    let dir = golden("pipeline");
    let inputs = dir.join("inputs.safetensors");
    let mut cmd = tessera();
    cmd.arg("generate").arg("--model").arg(&dir).arg("--prompt-embeds").arg(&inputs).arg("--latents").arg(&inputs);
    cmd.args(["--height", "96", "--width", "128", "--frames", "9", "--steps", "4", "--guidance", "1"]);
    cmd.args(["--scheduler", "euler", "--sigmas", "1,0.75,0.5,0.25", "--seed", "11"]);
    cmd.args(plan).arg("--out").arg(out).args(extra);
    run(&mut cmd)
}

/// Two worker processes, Ulysses 2.
const TWO: &[&str] = &["--ranks", "2", "--ulysses", "2"];

/// (width, height, RGB bytes) of a PNG.
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("png")));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn info_json(file: &Path) -> serde_json::Value {
    let o = run(tessera().arg("info").arg("--json").arg(file));
    assert!(o.status.success(), "{}", error_line(&o));
    serde_json::from_slice(&o.stdout).expect("info --json prints JSON")
}

#[test]
fn distilled_run_sends_previews_and_records_its_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let (mp4, previews) = (tmp.path().join("fox.mp4"), tmp.path().join("previews"));
    let o = generate(&mp4, TWO, &["--preview-dir", previews.to_str().unwrap(), "--preview-every", "2"]);
    assert!(o.status.success(), "{}", error_line(&o));

    // Previews: steps/k = 2 of them, named by step, ≤ 256 px, not flat, not all the same.
    let mut names: Vec<String> =
        std::fs::read_dir(&previews).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["step_002.png", "step_004.png"], "4 steps, a preview every 2");
    let pictures: Vec<(u32, u32, Vec<u8>)> = names.iter().map(|n| read_png(&previews.join(n))).collect();
    for (name, (w, h, rgb)) in names.iter().zip(&pictures) {
        let distinct = rgb.iter().collect::<std::collections::BTreeSet<_>>().len();
        println!("{name}: {w}×{h}, {distinct} distinct byte values");
        // The golden VAE is 16× spatial: the 128×96 video has an 8×6 latent grid.
        assert_eq!((*w, *h), (8, 6));
        assert!(*w <= 256 && *h <= 256);
        assert!(distinct > 4, "{name} is (nearly) constant");
    }
    assert_ne!(pictures[0].2, pictures[1].2, "the x0 estimate changes between steps");

    // The MP4 is still an MP4 to ffprobe, and its comment tag is the settings JSON.
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format_tags=comment:stream=codec_name,width,height", "-of", "json"])
        .arg(&mp4)
        .output()
        .expect("ffprobe is required (Debian: apt-get install ffmpeg)");
    assert!(probe.status.success(), "ffprobe: {}", String::from_utf8_lossy(&probe.stderr));
    let probe: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(probe["streams"][0]["codec_name"], "h264");
    let comment = probe["format"]["tags"]["comment"].as_str().expect("a comment tag");
    let from_ffprobe: serde_json::Value = serde_json::from_str(comment).expect("the comment is JSON");

    let s = info_json(&mp4);
    assert_eq!(s, from_ffprobe, "tessera info reads what ffprobe reads");
    assert_eq!(s["scheduler"], "euler");
    assert_eq!(s["sigmas"], serde_json::json!([1.0, 0.75, 0.5, 0.25]));
    assert_eq!((s["steps"].as_u64(), s["guidance"].as_f64(), s["seed"].as_u64()), (Some(4), Some(1.0), Some(11)));
    assert_eq!((s["width"].as_u64(), s["height"].as_u64(), s["frames"].as_u64()), (Some(128), Some(96), Some(9)));
    assert_eq!((s["plan"]["ranks"].as_u64(), s["plan"]["ulysses"].as_u64()), (Some(2), Some(2)));
    assert_eq!(s["negative_prompt"], serde_json::Value::Null, "guidance 1: no negative prompt");
    assert_eq!(s["prompt"]["embeds"].as_str().map(PathBuf::from), Some(golden("pipeline/inputs.safetensors")));
    assert!(s["tessera"].as_str().unwrap().starts_with("tessera "));
    let files = s["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "transformer and vae weights");
    assert!(files.iter().all(|f| f["hash"].as_str().is_some_and(|h| h.len() == 12)));

    // The summary and the command line that reruns it.
    let o = run(tessera().arg("info").arg(&mp4));
    assert!(o.status.success(), "{}", error_line(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(text.contains("scheduler euler, sigmas 1,0.75,0.5,0.25"), "{text}");
    assert!(text.contains("--scheduler euler --sigmas 1,0.75,0.5,0.25 --seed 11"), "{text}");
    assert!(text.contains("--latents "), "the initial noise file is part of the run: {text}");

    // PNG frames carry the same settings.
    let frames = tmp.path().join("frames/");
    let o = generate(&frames, TWO, &[]);
    assert!(o.status.success(), "{}", error_line(&o));
    let png = info_json(&frames.join("frame_00008.png"));
    assert_eq!(png["sigmas"], s["sigmas"]);
    assert_eq!(png["files"], s["files"], "same model, same hashes");

    // A file without settings says so in one line.
    let plain = tmp.path().join("plain.png");
    std::fs::copy(golden("pipeline_i2v/image.png"), &plain).unwrap();
    let o = run(tessera().arg("info").arg(&plain));
    assert!(!o.status.success());
    assert!(error_line(&o).contains("carries no Tessera settings"), "{}", error_line(&o));
}

#[test]
fn cfg_parallel_at_guidance_1_is_refused_with_a_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let o = generate(&tmp.path().join("x.mp4"), &["--ranks", "2", "--cfg-parallel", "2", "--ulysses", "1"], &[]);
    assert!(!o.status.success());
    let line = error_line(&o);
    assert!(line.contains("--cfg-parallel 2 needs classifier-free guidance"), "{line}");
    assert!(line.contains("use --ulysses 2 --cfg-parallel 1 instead"), "{line}");
}
