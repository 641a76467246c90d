//! Helpers for workspace-level end-to-end tests: locate the built `tessera` binaries, the golden
//! fixtures, run commands and compare tensors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Tensor};

pub mod peaks;

/// `target/<profile>/<name>`: the binaries `cargo test --workspace` builds beside the test runner.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: the end-to-end tests need `cargo build --workspace` before `cargo test --workspace`",
        path.display()
    );
    path
}

pub fn tessera() -> Command {
    Command::new(bin("tessera"))
}

/// `tests/fixtures/golden/<rel>`.
pub fn golden(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden").join(rel)
}

/// Runs and returns the output, printing stderr for the test log.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    eprintln!("$ {:?}\n{}", cmd, String::from_utf8_lossy(&out.stderr));
    out
}

/// The last non-empty stderr line (where `tessera` puts its one-line error).
pub fn error_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string()
}

/// (max |a−b|, ‖a−b‖/‖b‖) in f64.
pub fn errors(got: &Tensor, want: &Tensor) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let a = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (mut max, mut num, mut den) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        max = max.max((x - y).abs());
        num += (x - y).powi(2);
        den += y.powi(2);
    }
    (max, (num / den.max(1e-30)).sqrt())
}

/// The golden `lora/pipeline_ti2v` transformer written to `out` as ComfyUI writes a single file:
/// every tensor under its Wan-native name with the `model.diffusion_model.` prefix (the names of
/// the golden `single_file/comfy_transformer.safetensors`, which has the same architecture).
pub fn comfy_ti2v_transformer(out: &Path) {
    use tessera_engine::models::wan::checkpoint_keys::{split_native_prefix, transformer_native_to_diffusers};
    let device = candle_core::Device::Cpu;
    let names = candle_core::safetensors::load(golden("single_file/comfy_transformer.safetensors"), &device).unwrap();
    let folder = candle_core::safetensors::load(
        golden("lora/pipeline_ti2v/transformer/diffusion_pytorch_model.safetensors"),
        &device,
    )
    .unwrap();
    let mut tensors = std::collections::HashMap::new();
    for native in names.keys() {
        let (_, rest) = split_native_prefix(native);
        tensors.insert(native.clone(), folder[&transformer_native_to_diffusers(rest)].clone());
    }
    assert_eq!(tensors.len(), folder.len(), "every folder tensor has a native name");
    candle_core::safetensors::save(&tensors, out).unwrap();
}
