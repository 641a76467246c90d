//! The GPU check run by `scripts/gpu-check.sh run` on a machine with one NVIDIA GPU (built by
//! `scripts/gpu-check.sh build` on any machine). One stage per invocation, so that the driver script
//! can time each out and go on after a failure:
//!
//!   gpu_check env | parity FIXTURES | dit | vae | halo WORKER_EXE SCRATCH
//!
//! Every result is a `SUMMARY <stage> <key> <value>` line; a failing stage prints
//! `SUMMARY <stage> ERROR <message>` and exits 1. Peak device memory is the CUDA memory pool's
//! high-water mark (reset before each measured call) plus what lives outside the pool (context,
//! cuBLAS workspace), as the worker's telemetry reports it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tessera_engine::models::wan::transformer::attention::{set_fused_attention, ChunkedAttention};
use tessera_engine::models::wan::transformer::{transformer_config_for_arch, WanTransformer3DModel};
use tessera_engine::models::wan::vae::{self, AutoencoderKLWan, Tiling, VaeParts};
use tessera_engine::parallel::plan::VaeMode;
use tessera_engine::pipeline::sampling::per_token_timesteps;
use tessera_engine::random_weights::requested_tensors;
use tessera_engine::runtime::protocol::{DeviceKind, VaeDecodeSpec};
use tessera_engine::runtime::telemetry::Sampler;
use tessera_engine::runtime::{CommBackend, Job, Supervisor, WorldSpec};
use tessera_engine::tensor_io;

const GIB: f64 = (1u64 << 30) as f64;

fn summary(stage: &str, key: &str, value: impl std::fmt::Display) {
    println!("SUMMARY {stage} {key} {value}");
}

/// Pool high-water based device peak since the last reset, in GiB, and the reset.
struct Mem(Sampler);

impl Mem {
    fn new() -> Self {
        Self(Sampler::new(DeviceKind::Cuda, 0))
    }
    fn reset(&self) {
        self.0.reset_device_peak();
    }
    fn peak_gib(&self) -> f64 {
        self.0.device_memory().map(|m| m.peak() as f64 / GIB).unwrap_or(f64::NAN)
    }
    fn report(&self, stage: &str, key: &str) {
        if let Some(m) = self.0.device_memory() {
            summary(stage, &format!("{key}_peak_device_gib"), format!("{:.2}", m.peak() as f64 / GIB));
            if let Some(p) = m.pool {
                summary(stage, &format!("{key}_pool_used_high_gib"), format!("{:.2}", p.used_high as f64 / GIB));
            }
        }
    }
}

/// max-abs and ‖a−b‖/‖b‖ in f64; NaN/inf anywhere gives NaN.
fn errors(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let d = (&a - &b)?;
    let max_abs = d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let n = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    Ok((max_abs, n(&d)? / n(&b)?))
}

/// Prints the errors and fails above `tol` (relative).
fn check(stage: &str, key: &str, out: &Tensor, reference: &Tensor, tol: f64) -> Result<()> {
    let (max_abs, rel) = errors(out, reference)?;
    summary(stage, key, format!("max_abs={max_abs:.3e} rel={rel:.3e} tol={tol:.0e}"));
    if rel.is_nan() || rel > tol {
        bail!("{key}: relative error {rel:.3e} above {tol:.0e}");
    }
    Ok(())
}

/// Random weights for every tensor `build` asks for, made on the GPU (curand in f32, then cast):
/// gains 1 ± 0.05, biases ±0.02, matrices N(0, 1/fan_in), as `random_weights` scales them.
fn random_var_builder(
    dtype: DType,
    dev: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
) -> Result<VarBuilder<'static>> {
    let mut map = HashMap::new();
    for (name, shape) in requested_tensors(build)? {
        let leaf = name.rsplit('.').next().unwrap_or(&name);
        let is_norm = leaf == "gamma" || (leaf == "weight" && (name.contains("norm") || shape.len() == 1));
        let t = if is_norm {
            (Tensor::rand(-0.05f32, 0.05, shape.as_slice(), dev)? + 1.0)?
        } else if leaf == "bias" {
            Tensor::rand(-0.02f32, 0.02, shape.as_slice(), dev)?
        } else {
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let std = if shape.len() <= 1 { 0.02 } else { (1.0 / fan_in as f64).sqrt() };
            Tensor::randn(0f32, std as f32, shape.as_slice(), dev)?
        };
        map.insert(name, t.to_dtype(dtype)?);
    }
    Ok(VarBuilder::from_tensors(map, dtype, dev))
}

fn env_stage(dev: &Device) -> Result<()> {
    let Device::Cuda(cuda) = dev else { bail!("no CUDA device") };
    let ctx = cudarc::driver::CudaContext::new(0)?;
    summary("env", "device", ctx.name()?.replace(' ', "_"));
    let (major, minor) = (
        ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    summary("env", "compute_capability", format!("{major}.{minor}"));
    summary("env", "nccl_version", cudarc::nccl::result::get_nccl_version().map(|v| v.to_string()).unwrap_or_default());
    summary("env", "async_alloc_pool", ctx.has_async_alloc());
    // First use of a few kernel modules (PTX JIT for compute_89 code on other GPUs).
    let t0 = Instant::now();
    let x = Tensor::ones((1024, 1024), DType::BF16, dev)?;
    let y = x.matmul(&x)?.exp()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    summary("env", "first_kernels_s", format!("{:.2} (sum {y})", t0.elapsed().as_secs_f64()));
    let _ = cuda;
    Mem::new().report("env", "idle");
    Ok(())
}

/// Golden parity on the GPU. f32: diffusers f32 CPU references, only summation order differs
/// (no TF32: candle's f32 GEMMs use CUBLAS_COMPUTE_32F) → the project's 1e-4 budget. bf16: weights
/// and activations rounded to 8 mantissa bits (2^-8 ≈ 4e-3 per rounding) through a few layers → 3e-2.
fn parity_stage(dev: &Device, fixtures: &Path) -> Result<()> {
    let dit = fixtures.join("dit");
    let inputs = tensor_io::read_all(&dit.join("inputs.safetensors"), dev)?;
    let outputs = tensor_io::read_all(&dit.join("outputs.safetensors"), &Device::Cpu)?;
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        for attention in [ChunkedAttention::default(), ChunkedAttention::new(4, 8)] {
            let m = WanTransformer3DModel::load(&dit.join("transformer"), dtype, dev)?.with_attention(attention);
            let ctx = inputs["context"].to_dtype(dtype)?;
            let out = m.forward(&inputs["latents"].to_dtype(dtype)?, &inputs["timestep"], &ctx)?;
            let key = format!("dit_{dtype:?}_q{}_kv{}", attention.q_block, attention.kv_block).to_lowercase();
            check("parity", &key, &out, &outputs["out"], tol)?;
            let out = m.forward(&inputs["latents"].to_dtype(dtype)?, &inputs["timestep_per_token"], &ctx)?;
            check("parity", &format!("{key}_per_token"), &out, &outputs["out_per_token"], tol)?;
        }
    }
    let case = fixtures.join("vae22");
    let inputs = tensor_io::read_all(&case.join("inputs.safetensors"), dev)?;
    let outputs = tensor_io::read_all(&case.join("outputs.safetensors"), &Device::Cpu)?;
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        let model = vae::load(&case, VaeParts::Both, dtype, dev)?;
        let decoded = model.decode(&inputs["latents"].to_dtype(dtype)?, None, &mut |_| {})?;
        check("parity", &format!("vae22_decode_{dtype:?}").to_lowercase(), &decoded, &outputs["decoded"], tol)?;
        let moments = model.encode(&inputs["video"].to_dtype(dtype)?, None, &mut |_| {})?;
        check("parity", &format!("vae22_enc_mean_{dtype:?}").to_lowercase(), &moments.mean, &outputs["enc_mean"], tol)?;
    }
    Ok(())
}

/// Real-size TI2V-5B forward at 720p's 27,280 tokens (latent 31×44×80, patch 1×2×2), bf16,
/// per-token timesteps (I2V), text of 512 tokens; chunked attention (fused: needs `flash-attn`).
fn dit_stage(dev: &Device) -> Result<()> {
    let cfg = transformer_config_for_arch("wan2.2-ti2v-5b", None)?;
    let mem = Mem::new();
    let t0 = Instant::now();
    let vb = random_var_builder(DType::BF16, dev, |vb| WanTransformer3DModel::new(&cfg, vb).map(|_| ()))?;
    let model = WanTransformer3DModel::new(&cfg, vb)?;
    dev.synchronize()?;
    summary("dit", "weights_build_s", format!("{:.1}", t0.elapsed().as_secs_f64()));
    mem.report("dit", "weights");
    let (f, h, w) = (31, 44, 80);
    let latents = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, f, h, w), dev)?.to_dtype(DType::BF16)?;
    let timestep = per_token_timesteps(900.0, (f, h, w), (2, 2), true, dev)?;
    let text = Tensor::randn(0f32, 1.0, (1, 512, cfg.text_dim), dev)?.to_dtype(DType::BF16)?;
    summary("dit", "tokens", f * (h / 2) * (w / 2));
    let mut outs = Vec::new();
    let variants: &[(&str, bool)] =
        if cfg!(feature = "flash-attn") { &[("chunked", false), ("fused", true)] } else { &[("chunked", false)] };
    for &(name, fused) in variants {
        set_fused_attention(fused);
        let _ = model.forward(&latents, &timestep, &text)?;
        dev.synchronize()?;
        mem.reset();
        let t0 = Instant::now();
        let out = model.forward(&latents, &timestep, &text)?;
        dev.synchronize()?;
        summary("dit", &format!("{name}_forward_s"), format!("{:.2}", t0.elapsed().as_secs_f64()));
        summary("dit", &format!("{name}_peak_device_gib"), format!("{:.2}", mem.peak_gib()));
        let finite = out.to_dtype(DType::F32)?.abs()?.max_all()?.to_scalar::<f32>()?.is_finite();
        summary("dit", &format!("{name}_output_finite"), finite);
        outs.push(out);
    }
    match outs.as_slice() {
        // Both bf16 with f32 softmax statistics; they differ by bf16 rounding of p·v (2^-8 relative
        // per element, averaged over 27k keys) through 30 blocks: 2e-2 bounds it.
        [chunked, fused] => check("dit", "fused_vs_chunked", fused, chunked, 2e-2)?,
        _ => summary("dit", "fused_forward_s", "SKIP (built without the flash-attn feature)"),
    }
    Ok(())
}

/// Wan2.2 decoder at real widths (random weights, f32), latent 48×31×44×80 → 121 frames of
/// 704×1280: untiled, then tiled with diffusers' default tiles.
fn vae_stage(dev: &Device) -> Result<()> {
    let cfg = vae::Config::wan22();
    let mem = Mem::new();
    let vb = random_var_builder(DType::F32, dev, |vb| AutoencoderKLWan::new(&cfg, VaeParts::Decoder, vb).map(|_| ()))?;
    let model = AutoencoderKLWan::new(&cfg, VaeParts::Decoder, vb)?;
    let z = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, 31, 44, 80), dev)?;
    for (name, tiling) in [("untiled", None), ("tiled", Some(Tiling::default()))] {
        dev.synchronize()?;
        mem.reset();
        let t0 = Instant::now();
        let video = model.decode(&z, tiling.as_ref(), &mut |_| {})?;
        dev.synchronize()?;
        summary("vae", &format!("{name}_decode_s"), format!("{:.1}", t0.elapsed().as_secs_f64()));
        summary("vae", &format!("{name}_peak_device_gib"), format!("{:.2}", mem.peak_gib()));
        summary("vae", &format!("{name}_video_shape"), format!("{:?}", video.dims()).replace(' ', ""));
    }
    Ok(())
}

/// The same decode in halo mode over 2 CUDA ranks sharing GPU 0 through sockets (`--gpus 0,0
/// --comm socket`), through the real worker processes.
fn halo_stage(worker: &Path, scratch: &Path) -> Result<()> {
    std::fs::create_dir_all(scratch)?;
    let model = scratch.join("wan22-vae");
    if !model.join("vae").join("config.json").exists() {
        let t0 = Instant::now();
        tessera_engine::random_weights::write_vae(
            &model.join("vae"),
            &vae::Config::wan22(),
            7,
            tessera_engine::random_weights::StoreDtype::F32,
        )?;
        summary("halo", "write_model_s", format!("{:.1}", t0.elapsed().as_secs_f64()));
    }
    let latents = scratch.join("latents.safetensors");
    let z = Tensor::from_vec(
        tessera_engine::random_weights::standard_normal(3, 48 * 31 * 44 * 80),
        (1, 48, 31, 44, 80),
        &Device::Cpu,
    )?;
    tensor_io::write_atomic(&latents, &[("latents", z)])?;
    let spec = WorldSpec {
        ranks: 2,
        device: DeviceKind::Cuda,
        comm: CommBackend::Socket,
        gpus: vec![0],
        worker_exe: Some(worker.to_path_buf()),
        ..WorldSpec::default()
    };
    let mut sup = Supervisor::spawn(spec).context("starting 2 CUDA workers on GPU 0")?;
    let job = Job::VaeDecode(VaeDecodeSpec {
        model: model.clone(),
        config: None,
        latents,
        out: scratch.join("video.safetensors"),
        mode: VaeMode::Halo,
        tiling: None,
        vae_parallel: None,
    });
    let t0 = Instant::now();
    let result = sup.run_job(job, |_| {})?;
    summary("halo", "decode_2ranks_1gpu_s", format!("{:.1}", t0.elapsed().as_secs_f64()));
    for r in &result.report.ranks {
        summary("halo", &format!("rank{}_peak_device_gib", r.rank), format!("{:.2}", r.peak_bytes as f64 / GIB));
        for p in &r.phases {
            summary("halo", &format!("rank{}_{}_s", r.rank, p.name), format!("{:.1}", p.seconds));
        }
    }
    sup.shutdown();
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let stage = args.get(1).cloned().unwrap_or_default();
    let run = || -> Result<()> {
        let dev = Device::new_cuda(0)?;
        match stage.as_str() {
            "env" => env_stage(&dev),
            "parity" => parity_stage(&dev, &PathBuf::from(args.get(2).context("parity FIXTURES_DIR")?)),
            "dit" => dit_stage(&dev),
            "vae" => vae_stage(&dev),
            "halo" => halo_stage(
                &PathBuf::from(args.get(2).context("halo WORKER_EXE SCRATCH")?),
                &PathBuf::from(args.get(3).context("halo WORKER_EXE SCRATCH")?),
            ),
            other => bail!("unknown stage {other:?} (env | parity FIXTURES | dit | vae | halo WORKER SCRATCH)"),
        }
    };
    if let Err(e) = run() {
        summary(&stage, "ERROR", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
