//! What several benchmarks share: seeded VAE checkpoints and latents kept between runs, running a
//! measured case in a child process, and the process's peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use tessera_engine::api::random_models::{standard_normal, write_hv15_vae, write_vae, StoreDtype};
use tessera_engine::api::tools::vae;
use tessera_engine::api::write_tensors;

/// `VmHWM` of this process.
pub fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    let kb: u64 = line.split_whitespace().nth(1).context("bad VmHWM line")?.parse()?;
    Ok(kb * 1024)
}

/// A VAE-only pipeline folder of `arch` (`wan2.1-vae`, `wan2.2-vae`, `hv15-vae`) with seed-0
/// random weights, written on first use.
pub fn ensure_vae_model(dir: &Path, arch: &str) -> Result<PathBuf> {
    if !["wan2.1-vae", "wan2.2-vae", "hv15-vae"].contains(&arch) {
        bail!("unknown arch `{arch}` (wan2.1-vae, wan2.2-vae, hv15-vae)");
    }
    let root = dir.join(format!("{arch}-seed0"));
    if !root.join("vae/config.json").is_file() {
        eprintln!("writing {arch} with seeded random weights to {}", root.display());
        let dir = root.join("vae");
        match arch {
            "wan2.1-vae" => write_vae(&dir, &vae::Config::wan21(), 0, StoreDtype::F32)?,
            "wan2.2-vae" => write_vae(&dir, &vae::Config::wan22(), 0, StoreDtype::F32)?,
            _ => write_hv15_vae(&dir, &Default::default(), 0, StoreDtype::F32)?,
        };
    }
    Ok(root)
}

/// Latent channels of a VAE folder's `config.json`, either family (Wan `z_dim`, HunyuanVideo 1.5
/// `latent_channels`).
pub fn latent_channels(vae_dir: &Path) -> Result<usize> {
    let path = vae_dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    v.get("z_dim")
        .or_else(|| v.get("latent_channels"))
        .and_then(serde_json::Value::as_u64)
        .map(|z| z as usize)
        .with_context(|| format!("{}: neither z_dim nor latent_channels", path.display()))
}

/// Unit-variance latents `(1, z, T, H, W)` for `size` = [T, H, W], written on first use.
pub fn ensure_latents(dir: &Path, z: usize, size: [usize; 3]) -> Result<PathBuf> {
    let [t, h, w] = size;
    let path = dir.join(format!("latents-z{z}-{t}x{h}x{w}.safetensors"));
    if !path.is_file() {
        // Unit-variance latents, like a denoised sample in normalised space.
        let values = standard_normal(1, z * t * h * w);
        let lat = Tensor::from_vec(values, (1, z, t, h, w), &Device::Cpu)?;
        write_tensors(&path, &[("latents", lat)])?;
    }
    Ok(path)
}

/// Runs one measured case as a child process (so its peak RSS is its own) and parses the last JSON
/// line it prints.
pub fn run_child<T: DeserializeOwned>(mut cmd: Command) -> Result<T> {
    let out = cmd.output().context("running a benchmark case")?;
    if !out.status.success() {
        bail!("benchmark case failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("case printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}
