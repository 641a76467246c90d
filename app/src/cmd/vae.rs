//! `tessera vae decode|encode`: diffusers' `vae.decode(latents).sample` and
//! `vae.encode(video).latent_dist` on safetensors files (the contract external checks use).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use tessera_engine::models::wan::vae::{self, AutoencoderKLWan, Tiling, VaeParts, VaeProgress};
use tessera_engine::tensor_io;

#[derive(Subcommand, Debug)]
pub enum VaeCommand {
    /// Decode tensor `latents` [B,C,T,H,W] to tensor `video` [B,3,F,H,W] (f32, [-1,1]).
    Decode(DecodeArgs),
    /// Encode tensor `video` [B,3,F,H,W] in [-1,1] (or a PNG/JPEG image) to tensors `mean` and `logvar`.
    Encode(EncodeArgs),
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Pipeline folder (uses its `vae/`) or the VAE folder itself.
    #[arg(long)]
    pub model: PathBuf,
    /// Safetensors file holding tensor `latents`.
    #[arg(long)]
    pub latents: PathBuf,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Spatial tiling as diffusers' enable_tiling: TILE_H,TILE_W,STRIDE_H,STRIDE_W in sample pixels.
    #[arg(long, value_name = "TH,TW,SH,SW", value_parser = Tiling::parse)]
    pub tiling: Option<Tiling>,
    /// Worker processes (CPU ranks). >1 without --tiling decodes in halo mode: each rank a row slab.
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// JSON run report (wall_seconds; per rank peak/weights bytes and phases); runs on workers.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// Pipeline folder (uses its `vae/`) or the VAE folder itself.
    #[arg(long)]
    pub model: PathBuf,
    /// Safetensors file holding tensor `video`, or a PNG/JPEG image (a 1-frame video).
    #[arg(long)]
    pub video: PathBuf,
    /// Output safetensors file with `mean` and `logvar` (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Spatial tiling: TILE_H,TILE_W,STRIDE_H,STRIDE_W in sample pixels.
    #[arg(long, value_name = "TH,TW,SH,SW", value_parser = Tiling::parse)]
    pub tiling: Option<Tiling>,
}

pub fn run(cmd: VaeCommand) -> Result<()> {
    match cmd {
        VaeCommand::Decode(a) => decode(a),
        VaeCommand::Encode(a) => encode(a),
    }
}

fn load(model: &Path, parts: VaeParts) -> Result<AutoencoderKLWan> {
    let started = std::time::Instant::now();
    let vae = vae::load(model, parts, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading the VAE from {}", model.display()))?;
    tracing::info!("loaded VAE in {:.2}s", started.elapsed().as_secs_f64());
    Ok(vae)
}

fn check_out(out: &Path) -> Result<()> {
    if out.is_dir() {
        bail!("--out {} is a folder; give a file name such as {}/out.safetensors", out.display(), out.display());
    }
    Ok(())
}

fn decode(a: DecodeArgs) -> Result<()> {
    check_out(&a.out)?;
    if a.ranks > 1 || a.report.is_some() {
        return decode_on_workers(&a);
    }
    let latents = tensor_io::read_tensor(&a.latents, "latents", DType::F32, &Device::Cpu)?;
    let vae = load(&a.model, VaeParts::Decoder)?;
    let started = std::time::Instant::now();
    let pb = crate::progress::bar(1, "decode");
    let video = vae
        .decode(&latents, a.tiling.as_ref(), &mut |p| set_progress(&pb, p))
        .with_context(|| format!("decoding {}", a.latents.display()))?;
    pb.finish_and_clear();
    tracing::info!("decoded {:?} -> {:?} in {:.2}s", latents.dims(), video.dims(), started.elapsed().as_secs_f64());
    tensor_io::write_atomic(&a.out, &[("video", video)])?;
    Ok(())
}

/// The decode as a job on `--ranks` worker processes (halo mode, or rank 0 for a tiled decode).
fn decode_on_workers(a: &DecodeArgs) -> Result<()> {
    use tessera_engine::runtime::protocol::{Job, VaeDecodeSpec};
    use tessera_engine::runtime::{JobEvent, Supervisor, WorldSpec};
    let spec = VaeDecodeSpec {
        model: a.model.clone(),
        latents: a.latents.clone(),
        out: a.out.clone(),
        tiling: a.tiling.map(|t| {
            [t.tile_sample_min_height, t.tile_sample_min_width, t.tile_sample_stride_height, t.tile_sample_stride_width]
        }),
    };
    let mut sup =
        Supervisor::spawn(WorldSpec { ranks: a.ranks, ..WorldSpec::default() }).context("starting the workers")?;
    let pb = crate::progress::bar(1, "decode");
    let started = std::time::Instant::now();
    let result = sup.run_job(Job::VaeDecode(spec), |e| {
        if let JobEvent::Progress { step, total, .. } = e {
            pb.set_length(*total);
            pb.set_position(*step);
        }
    });
    pb.finish_and_clear();
    sup.shutdown();
    let result = result.with_context(|| format!("decoding {} on {} ranks", a.latents.display(), a.ranks))?;
    if let Some(path) = &a.report {
        result.report.write_json(path).with_context(|| format!("writing the report {}", path.display()))?;
    }
    tracing::info!("decoded on {} ranks in {:.2}s", a.ranks, started.elapsed().as_secs_f64());
    Ok(())
}

fn encode(a: EncodeArgs) -> Result<()> {
    check_out(&a.out)?;
    let video = read_video(&a.video)?;
    let vae = load(&a.model, VaeParts::Encoder)?;
    let started = std::time::Instant::now();
    let pb = crate::progress::bar(1, "encode");
    let moments = vae
        .encode(&video, a.tiling.as_ref(), &mut |p| set_progress(&pb, p))
        .with_context(|| format!("encoding {}", a.video.display()))?;
    pb.finish_and_clear();
    tracing::info!(
        "encoded {:?} -> {:?} in {:.2}s",
        video.dims(),
        moments.mean.dims(),
        started.elapsed().as_secs_f64()
    );
    tensor_io::write_atomic(&a.out, &[("mean", moments.mean), ("logvar", moments.logvar)])?;
    Ok(())
}

fn set_progress(pb: &indicatif::ProgressBar, p: VaeProgress) {
    let (index, total) = match p {
        VaeProgress::Chunk { index, total } => (index, total),
        VaeProgress::Tile { index, total, .. } => (index, total),
    };
    pb.set_length(total as u64);
    pb.set_position(index as u64 + 1);
}

/// A `video` tensor from safetensors, or an image file as `[1, 3, 1, H, W]` in [-1, 1].
fn read_video(path: &Path) -> Result<Tensor> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
        let img = image::open(path).with_context(|| format!("reading image {}", path.display()))?.to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let data: Vec<f32> = img.into_raw().into_iter().map(|v| v as f32 / 127.5 - 1.0).collect();
        // (h, w, 3) -> (1, 3, 1, h, w)
        return Ok(Tensor::from_vec(data, (h, w, 3), &Device::Cpu)?.permute((2, 0, 1))?.reshape((1, 3, 1, h, w))?);
    }
    Ok(tensor_io::read_tensor(path, "video", DType::F32, &Device::Cpu)?)
}
