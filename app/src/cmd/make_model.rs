//! `tessera make-model`: a diffusers folder with a real architecture's config and seeded random
//! weights (engine `pipeline_folder`), to test and benchmark at real size without downloading
//! anything. The VAE archs write `vae/` only; `--layers N` keeps the real widths but cuts the
//! transformer to N blocks. The `hv15-*` archs write HunyuanVideo 1.5 folders (transformer, VAE,
//! scheduler, guider; no text encoders); `hv15-480p-i2v` adds its SigLIP image encoder (cut to N
//! layers too, at most its 27) and feature extractor.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use tessera_engine::api::random_models::{
    write_hv15_pipeline, write_json, write_pipeline, write_vae, Arch, Hv15Spec, PipelineSpec, StoreDtype,
    WrittenComponent, DIFFUSERS_SHARD_BYTES, DIFFUSERS_VERSION,
};
use tessera_engine::api::tools::vae;

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
    /// Output folder (created): a diffusers pipeline folder (the VAE archs write only `vae/`).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype (the Hub stores Wan VAEs and the Wan2.2 transformers in f32).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Transformer blocks to write (default: the real depth), and SigLIP layers of an I2V folder
    /// (at most its 27). Widths stay the real ones.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Largest transformer shard in bytes (diffusers' default "5GB"); bigger components are
    /// written as numbered shards with an index.
    #[arg(long, default_value_t = DIFFUSERS_SHARD_BYTES)]
    pub max_shard_bytes: u64,
}

fn report(component: &str, w: &WrittenComponent) {
    println!(
        "  {component}: {} tensors, {} parameters, {:.2} GB in {} file{}",
        w.tensors,
        w.params,
        w.bytes as f64 / 1e9,
        w.shards,
        if w.shards == 1 { "" } else { "s" }
    );
}

pub fn run(a: MakeModelArgs) -> Result<()> {
    let dtype = match a.dtype {
        Dtype::F32 => StoreDtype::F32,
        Dtype::Bf16 => StoreDtype::Bf16,
    };
    let name = a.arch.name();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let started = std::time::Instant::now();
    println!("writing {name} (seed {}) to {}", a.seed, a.out.display());
    if let Some(spec) = Hv15Spec::for_arch(a.arch, a.layers)? {
        for (component, w) in write_hv15_pipeline(&a.out, &spec, a.seed, dtype, a.max_shard_bytes)? {
            report(component, &w);
        }
        println!("done in {:.1}s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let Some(spec) = PipelineSpec::for_arch(a.arch, a.layers)? else {
        if a.layers.is_some() {
            anyhow::bail!("--layers applies to the transformer archs, not {name}");
        }
        let cfg = if a.arch == Arch::Wan21Vae { vae::Config::wan21() } else { vae::Config::wan22() };
        let written = write_vae(&a.out.join("vae"), &cfg, a.seed, dtype)
            .with_context(|| format!("writing {name} to {}", a.out.display()))?;
        report("vae", &written);
        let index = json!({
            "_class_name": "WanPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "vae": ["diffusers", "AutoencoderKLWan"],
        });
        write_json(&a.out.join("model_index.json"), &index)?;
        println!("done in {:.1}s", started.elapsed().as_secs_f64());
        return Ok(());
    };
    for (component, w) in write_pipeline(&a.out, &spec, a.seed, dtype, a.max_shard_bytes)? {
        report(component, &w);
    }
    println!("done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
