//! End to end through `tessera` and its workers: models given as single files, LoRAs merged at
//! load, against diffusers' videos (golden case `lora`, `pipe.load_lora_weights` + `set_adapters`):
//!
//! - a ComfyUI-style single-file TI2V transformer (Wan-native names, `model.diffusion_model.`
//!   prefix) + a VAE file + `--config`, with the lightx2v LoRA at 0.7, on 2 CPU workers with FSDP 2
//!   (each rank merges its slice) — equal to diffusers' `video_lightx2v`;
//! - the A14B pipeline folder with one LoRA per expert (`@high` 1.0, `@low` 0.6) — `video_a14b`;
//! - `vae decode --model` with ComfyUI's Wan-native VAE file, equal to its diffusers folder;
//! - a LoRA that fits nothing fails before any worker starts, in one line.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tessera_e2e::{comfy_ti2v_transformer, error_line, errors, golden, run, tessera};
use tessera_engine::tensor_io;

/// A 4-step (TI2V) / 5-step (A14B) pipeline in f32 against diffusers' f32 pipeline with the
/// unfused LoRA: per-step differences of ~1e-7 (merge order, matmul blocking) grow through the
/// sampler and the VAE; the plain pipelines land at ~1e-6 here, and 1e-4 is the bound.
const REL_TOL: f64 = 1e-4;

fn lora(rel: &str) -> PathBuf {
    golden("lora").join(rel)
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn video(path: &Path, name: &str) -> Tensor {
    tensor_io::read_tensor(path, name, DType::F32, &Device::Cpu).unwrap()
}

fn generate(args: &[String]) -> std::process::Output {
    let mut cmd = tessera();
    cmd.arg("generate").args(args);
    run(&mut cmd)
}

#[test]
fn single_file_ti2v_with_a_lora_on_two_workers_with_fsdp_2() {
    let tmp = tempfile::tempdir().unwrap();
    let transformer = tmp.path().join("wan2.2_ti2v_5B_fp16.safetensors");
    comfy_ti2v_transformer(&transformer);
    let inputs = s(&lora("inputs.safetensors"));
    let out = tmp.path().join("video.safetensors");
    let o = generate(&[
        "--transformer".into(),
        s(&transformer),
        "--vae".into(),
        s(&lora("pipeline_ti2v/vae/diffusion_pytorch_model.safetensors")),
        "--config".into(),
        s(&lora("pipeline_ti2v")),
        "--lora".into(),
        format!("{}:0.7", s(&lora("lora_lightx2v.safetensors"))),
        "--prompt-embeds".into(),
        inputs.clone(),
        "--negative-prompt-embeds".into(),
        inputs.clone(),
        "--latents".into(),
        inputs,
        "--height".into(),
        "64".into(),
        "--width".into(),
        "96".into(),
        "--frames".into(),
        "9".into(),
        "--steps".into(),
        "4".into(),
        "--guidance".into(),
        "4".into(),
        "--ulysses".into(),
        "2".into(),
        "--fsdp".into(),
        "2".into(),
        "--out".into(),
        s(&out),
    ]);
    assert!(o.status.success(), "{}", error_line(&o));
    let (max_abs, rel) = errors(&video(&out, "video"), &video(&lora("outputs.safetensors"), "video_lightx2v"));
    println!("single-file TI2V + lightx2v 0.7, 2 workers FSDP 2: vs diffusers max-abs {max_abs:.3e}, rel {rel:.3e}");
    assert!(rel <= REL_TOL, "relative error {rel:.3e} > {REL_TOL:.0e}");
}

#[test]
fn a14b_with_one_lora_per_expert_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    // The A14B inputs under the names `generate` reads.
    let src = lora("inputs.safetensors");
    let read = |n: &str| tensor_io::read_tensor(&src, n, DType::F32, &Device::Cpu).unwrap();
    let inputs = tmp.path().join("a14b_inputs.safetensors");
    tensor_io::write_atomic(
        &inputs,
        &[
            ("latents", read("a14b_latents")),
            ("prompt_embeds", read("a14b_prompt_embeds")),
            ("negative_prompt_embeds", read("a14b_negative_prompt_embeds")),
        ],
    )
    .unwrap();
    let out = tmp.path().join("video.safetensors");
    let o = generate(&[
        "--model".into(),
        s(&lora("pipeline_a14b")),
        "--lora".into(),
        format!("{}:1.0@high", s(&lora("lora_high.safetensors"))),
        "--lora".into(),
        format!("{}:0.6@low", s(&lora("lora_low.safetensors"))),
        "--prompt-embeds".into(),
        s(&inputs),
        "--negative-prompt-embeds".into(),
        s(&inputs),
        "--latents".into(),
        s(&inputs),
        "--height".into(),
        "48".into(),
        "--width".into(),
        "64".into(),
        "--frames".into(),
        "5".into(),
        "--steps".into(),
        "5".into(),
        "--guidance".into(),
        "3.5".into(),
        "--guidance-2".into(),
        "2.5".into(),
        "--out".into(),
        s(&out),
    ]);
    assert!(o.status.success(), "{}", error_line(&o));
    let (max_abs, rel) = errors(&video(&out, "video"), &video(&lora("outputs.safetensors"), "video_a14b"));
    println!("A14B + lora_high@high 1.0 + lora_low@low 0.6: vs diffusers max-abs {max_abs:.3e}, rel {rel:.3e}");
    assert!(rel <= REL_TOL, "relative error {rel:.3e} > {REL_TOL:.0e}");
}

#[test]
fn vae_decode_takes_comfyui_wan_vae_file() {
    let tmp = tempfile::tempdir().unwrap();
    let latents = tmp.path().join("latents.safetensors");
    let z = tensor_io::read_tensor(&golden("single_file/inputs.safetensors"), "vae_latents", DType::F32, &Device::Cpu)
        .unwrap();
    tensor_io::write_atomic(&latents, &[("latents", z)]).unwrap();
    let decode = |model: PathBuf, config: Option<PathBuf>, out: &Path| {
        let mut cmd = tessera();
        cmd.args(["vae", "decode", "--model"]).arg(model).arg("--latents").arg(&latents).arg("--out").arg(out);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let o = run(&mut cmd);
        assert!(o.status.success(), "{}", error_line(&o));
        video(out, "video")
    };
    let from_file = decode(
        golden("single_file/wan_vae.safetensors"),
        Some(golden("single_file/vae")),
        &tmp.path().join("a.safetensors"),
    );
    let from_folder = decode(golden("single_file/vae"), None, &tmp.path().join("b.safetensors"));
    let (max_abs, _) = errors(&from_file, &from_folder);
    println!("vae decode of wan_vae.safetensors vs vae/: max-abs {max_abs:.3e}");
    assert_eq!(max_abs, 0.0, "the same weights decode the same");
}

#[test]
fn a_lora_that_fits_nothing_fails_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = s(&lora("inputs.safetensors"));
    let out = tmp.path().join("video.safetensors");
    let o = generate(&[
        "--model".into(),
        s(&lora("pipeline_ti2v")),
        "--lora".into(),
        s(&lora("lora_high.safetensors")),
        "--prompt-embeds".into(),
        inputs.clone(),
        "--negative-prompt-embeds".into(),
        inputs,
        "--height".into(),
        "64".into(),
        "--width".into(),
        "96".into(),
        "--frames".into(),
        "9".into(),
        "--steps".into(),
        "1".into(),
        "--guidance".into(),
        "4".into(),
        "--out".into(),
        s(&out),
    ]);
    assert!(!o.status.success());
    let line = error_line(&o);
    assert!(line.contains("another architecture") && line.contains("lora_high"), "{line}");
    assert!(!out.exists(), "nothing is written on failure");
}
