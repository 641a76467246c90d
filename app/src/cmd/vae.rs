//! `tessera vae decode|encode`: diffusers' `vae.decode(latents).sample` and
//! `vae.encode(video).latent_dist` on safetensors files (the contract external checks use).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use tessera_engine::api::tools::any_vae::{self, Vae};
use tessera_engine::api::tools::vae::{Tiling, VaeParts, VaeProgress};
use tessera_engine::api::tools::{
    read_tensor, read_video_or_image, Job, Supervisor, VaeDecodeSpec, VaeEncodeSpec, WorldSpec,
};
use tessera_engine::api::{write_tensors, JobEvent, VaeMode};

#[derive(Subcommand, Debug)]
pub enum VaeCommand {
    /// Decode tensor `latents` [B,C,T,H,W] to tensor `video` [B,3,F,H,W] (f32; Wan clamps to [-1,1],
    /// HunyuanVideo 1.5 does not, as in diffusers). Wan and HunyuanVideo 1.5 VAEs.
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
    #[command(flatten)]
    pub parallel: ParallelArgs,
}

/// Patch-parallel options shared by decode and encode.
#[derive(Args, Debug, Clone)]
pub struct ParallelArgs {
    /// Worker processes (CPU ranks). More than 1 runs patch-parallel on the workers.
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// tiles: whole tiles per rank (identical to a single-device tiled run; default with --tiling);
    /// halo: a row slab of every feature map per rank (identical to an untiled run; default otherwise).
    #[arg(long, value_enum)]
    pub mode: Option<VaeMode>,
    /// Ranks that take part (0..N); the others idle. Default: all.
    #[arg(long)]
    pub vae_parallel: Option<usize>,
    /// JSON run report (wall_seconds; per rank peak/weights bytes and phases); runs on workers.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl ParallelArgs {
    fn on_workers(&self) -> bool {
        self.ranks > 1 || self.report.is_some() || self.vae_parallel.is_some() || self.mode.is_some()
    }

    /// The mode, checked against the tiling: halo with tiling is a contradiction, not a preference.
    fn mode(&self, tiling: Option<&Tiling>) -> Result<VaeMode> {
        match (self.mode, tiling) {
            (Some(VaeMode::Halo), Some(_)) => bail!(
                "--mode halo splits feature maps into row slabs and is identical to an untiled decode; it takes no \
                 --tiling. Drop --tiling, or use --mode tiles to spread the tiles over the ranks"
            ),
            (Some(m), _) => Ok(m),
            (None, Some(_)) => Ok(VaeMode::Tiles),
            (None, None) => Ok(VaeMode::Halo),
        }
    }
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
    #[command(flatten)]
    pub parallel: ParallelArgs,
}

pub fn run(cmd: VaeCommand) -> Result<()> {
    match cmd {
        VaeCommand::Decode(a) => decode(a),
        VaeCommand::Encode(a) => encode(a),
    }
}

fn load(model: &Path, parts: VaeParts) -> Result<Vae> {
    let started = std::time::Instant::now();
    let vae = any_vae::load(model, parts, DType::F32, &Device::Cpu)
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
    let mode = a.parallel.mode(a.tiling.as_ref())?;
    if a.parallel.on_workers() {
        let spec = VaeDecodeSpec {
            model: a.model.clone(),
            latents: a.latents.clone(),
            out: a.out.clone(),
            mode,
            tiling: a.tiling.map(tiling_array),
            vae_parallel: a.parallel.vae_parallel,
        };
        return run_on_workers(Job::VaeDecode(spec), &a.parallel, "decode", &a.latents);
    }
    let latents = read_tensor(&a.latents, "latents", DType::F32, &Device::Cpu)?;
    let vae = load(&a.model, VaeParts::Decoder)?;
    let started = std::time::Instant::now();
    let pb = crate::progress::bar(1, "decode");
    let video = vae
        .decode(&latents, a.tiling.as_ref(), &mut |p| set_progress(&pb, p))
        .with_context(|| format!("decoding {}", a.latents.display()))?;
    pb.finish_and_clear();
    tracing::info!("decoded {:?} -> {:?} in {:.2}s", latents.dims(), video.dims(), started.elapsed().as_secs_f64());
    write_tensors(&a.out, &[("video", video)])?;
    Ok(())
}

fn tiling_array(t: Tiling) -> [usize; 4] {
    [t.tile_sample_min_height, t.tile_sample_min_width, t.tile_sample_stride_height, t.tile_sample_stride_width]
}

/// A VAE job on `--ranks` worker processes, with a progress bar and the optional report.
fn run_on_workers(job: Job, p: &ParallelArgs, what: &str, input: &Path) -> Result<()> {
    if let Some(n) = p.vae_parallel {
        if n == 0 || n > p.ranks {
            bail!("--vae-parallel {n} must be between 1 and --ranks {}", p.ranks);
        }
    }
    let mut sup =
        Supervisor::spawn(WorldSpec { ranks: p.ranks, ..WorldSpec::default() }).context("starting the workers")?;
    let pb = crate::progress::bar(1, what);
    let started = std::time::Instant::now();
    let mut pieces = 0usize;
    let result = sup.run_job(job, |e| match e {
        JobEvent::Progress { step, total, .. } => {
            pb.set_length(*total);
            pb.set_position(*step);
        }
        JobEvent::VaePiece { rank, piece } => {
            pieces += 1;
            tracing::debug!(
                "rank {rank}: piece {} (chunk {:?}) at {:?} in {:.2}s",
                piece.index,
                piece.latent_chunk,
                piece.pixel_rect,
                piece.seconds
            );
        }
        _ => {}
    });
    pb.finish_and_clear();
    sup.shutdown();
    let result = result.with_context(|| format!("{what} of {} on {} ranks", input.display(), p.ranks))?;
    if let Some(path) = &p.report {
        result.report.write_json(path).with_context(|| format!("writing the report {}", path.display()))?;
    }
    tracing::info!("{what} on {} ranks in {:.2}s ({pieces} pieces)", p.ranks, started.elapsed().as_secs_f64());
    Ok(())
}

fn encode(a: EncodeArgs) -> Result<()> {
    check_out(&a.out)?;
    let mode = a.parallel.mode(a.tiling.as_ref())?;
    if a.parallel.on_workers() {
        let spec = VaeEncodeSpec {
            model: a.model.clone(),
            video: a.video.clone(),
            out: a.out.clone(),
            mode,
            tiling: a.tiling.map(tiling_array),
            vae_parallel: a.parallel.vae_parallel,
        };
        return run_on_workers(Job::VaeEncode(spec), &a.parallel, "encode", &a.video);
    }
    let video = read_video_or_image(&a.video).map_err(anyhow::Error::msg)?;
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
    write_tensors(&a.out, &[("mean", moments.mean), ("logvar", moments.logvar)])?;
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
