//! `tessera make-model`: a diffusers folder with a real architecture's config and seeded random
//! weights, to test and benchmark at real size without downloading anything.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use tessera_engine::models::wan::vae;
use tessera_engine::random_weights::{self, StoreDtype};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Arch {
    #[value(name = "wan2.1-vae")]
    Wan21Vae,
    #[value(name = "wan2.2-vae")]
    Wan22Vae,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

#[derive(Args, Debug)]
pub struct MakeModelArgs {
    /// Architecture to write.
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Seed of the random weights (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (created; the VAE goes to OUT/vae/ beside a model_index.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype (the Hub stores Wan VAEs in f32).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

pub fn run(a: MakeModelArgs) -> Result<()> {
    let dtype = match a.dtype {
        Dtype::F32 => StoreDtype::F32,
        Dtype::Bf16 => StoreDtype::Bf16,
    };
    let (cfg, name) = match a.arch {
        Arch::Wan21Vae => (vae::Config::wan21(), "wan2.1-vae"),
        Arch::Wan22Vae => (vae::Config::wan22(), "wan2.2-vae"),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let started = std::time::Instant::now();
    let written = random_weights::write_vae(&a.out.join("vae"), &cfg, a.seed, dtype)
        .with_context(|| format!("writing {name} to {}", a.out.display()))?;
    let index = serde_json::json!({
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.42.1",
        "vae": ["diffusers", "AutoencoderKLWan"],
    });
    std::fs::write(a.out.join("model_index.json"), serde_json::to_string_pretty(&index)?)?;
    println!(
        "wrote {name} (seed {}) to {}: {} tensors, {} parameters, {:.2} GB in {:.1}s",
        a.seed,
        a.out.display(),
        written.tensors,
        written.params,
        written.bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
