//! `tessera vae decode|encode --model <HunyuanVideo 1.5 folder>` through the real binary: the family
//! is read from `vae/config.json`, in-process and on worker processes in both patch-parallel modes,
//! against diffusers' outputs (tests/fixtures/hv15/vae); and a HunyuanVideo 1.5 pipeline folder
//! given to `generate` is recognised and refused with one line saying what runs so far.
//!
//! Tolerance: 1e-4 relative against the f32 diffusers references (the project's f32 budget; the
//! port lands around 1e-6).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use tessera_e2e::{error_line, errors, run, tessera};
use tessera_engine::tensor_io;

fn case() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/hv15/vae")
}

fn read(path: &std::path::Path, name: &str) -> Tensor {
    tensor_io::read_all(path, &Device::Cpu).unwrap().remove(name).unwrap()
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let (max, rel) = errors(got, want);
    println!("{name}: max_abs {max:.3e} rel {rel:.3e} (tolerance rel 1e-4)");
    assert!(rel <= 1e-4, "{name}: rel {rel:.3e}");
}

#[test]
fn hv15_vae_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = case().join("inputs.safetensors");
    let outputs = case().join("outputs.safetensors");
    let runs: [(&str, &str, &[&str], &str, &str); 4] = [
        ("decode", "--latents", &[], "video", "decoded"),
        ("decode", "--latents", &["--ranks", "2", "--mode", "halo"], "video", "decoded"),
        ("decode", "--latents", &["--ranks", "3", "--tiling", "64,64,48,48"], "video", "decoded_tiled"),
        ("encode", "--video", &["--ranks", "2", "--mode", "halo"], "mean", "enc_mean"),
    ];
    for (i, (cmd, input, extra, got, want)) in runs.iter().enumerate() {
        let out = dir.path().join(format!("{i}.safetensors"));
        let o = run(tessera()
            .args(["vae", cmd, "--model"])
            .arg(case())
            .arg(input)
            .arg(&inputs)
            .arg("--out")
            .arg(&out)
            .args(*extra));
        assert!(o.status.success(), "{cmd} {extra:?}: {}", error_line(&o));
        check(&format!("cli {cmd} {extra:?}"), &read(&out, got), &read(&outputs, want));
    }
}

#[test]
/// HV1.5 folders generate now (engine/tests/session_hv15.rs); one without its transformer is refused
/// in one line that names what is missing, and nothing is written.
fn an_incomplete_hv15_pipeline_folder_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model_index.json"), r#"{"_class_name": "HunyuanVideo15Pipeline"}"#).unwrap();
    let out = dir.path().join("out.mp4");
    let o = run(tessera()
        .args(["generate", "--model"])
        .arg(dir.path())
        .args([
            "--prompt",
            "a cat",
            "--height",
            "64",
            "--width",
            "96",
            "--frames",
            "5",
            "--steps",
            "2",
            "--guidance",
            "1",
            "--seed",
            "0",
            "--out",
        ])
        .arg(&out));
    assert!(!o.status.success());
    let line = error_line(&o);
    assert!(line.contains("no transformer/config.json"), "{line}");
    // The family is named, not Wan's folder layout.
    assert!(line.contains("incomplete HunyuanVideo 1.5 pipeline folder"), "{line}");
    assert!(!line.contains("Wan"), "{line}");
    assert!(!out.exists());
}

#[test]
fn bad_hv15_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // 4 frames: the HV1.5 encoder needs 1 + 4k.
    let video = dir.path().join("video.safetensors");
    let t = Tensor::zeros((1, 3, 4, 64, 96), candle_core::DType::F32, &Device::Cpu).unwrap();
    tensor_io::write_atomic(&video, &[("video", t)]).unwrap();
    let out = dir.path().join("out.safetensors");
    let o =
        run(tessera().args(["vae", "encode", "--model"]).arg(case()).arg("--video").arg(&video).arg("--out").arg(&out));
    assert!(!o.status.success() && !out.exists());
    let line = error_line(&o);
    assert!(line.starts_with("error: ") && line.contains("video frames must be 1 + 4·k, got 4"), "{line}");
    // Latents of a Wan VAE (16 channels) given to the HV1.5 VAE (4 here).
    let latents = dir.path().join("latents.safetensors");
    let t = Tensor::zeros((1, 16, 2, 4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
    tensor_io::write_atomic(&latents, &[("latents", t)]).unwrap();
    let o = run(tessera()
        .args(["vae", "decode", "--model"])
        .arg(case())
        .arg("--latents")
        .arg(&latents)
        .arg("--out")
        .arg(&out));
    assert!(!o.status.success() && !out.exists());
    let line = error_line(&o);
    assert!(line.contains("latents have 16 channels but this VAE expects latent_channels = 4"), "{line}");
    // Halo mode with more ranks than latent rows names the limit.
    let inputs = case().join("inputs.safetensors");
    let o = run(tessera()
        .args(["vae", "decode", "--model"])
        .arg(case())
        .arg("--latents")
        .arg(&inputs)
        .arg("--out")
        .arg(&out)
        .args(["--ranks", "5", "--mode", "halo"]));
    assert!(!o.status.success() && !out.exists());
    let line = error_line(&o);
    assert!(line.contains("use at most 4 ranks"), "{line}");
}
