//! Wan2.1 / Wan2.2 VAE (`AutoencoderKLWan`), exact to diffusers (diffusers@58eb52c0
//! `models/autoencoders/autoencoder_kl_wan.py`).
//!
//! - [`config`]: `config.json` schema and the two published presets.
//! - [`autoencoder`]: decode/encode with temporal chunking, tiling, (un)patchify, clamp.
//! - [`encoder`], [`decoder`], [`blocks`], [`layers`]: the module tree, one struct per diffusers
//!   module, built from a `VarBuilder` with the checkpoint's key names.
//! - [`cache`]: per-conv causal caches for chunked processing.
//! - [`split`]: row slabs and the neighbour exchange of halo mode.
//! - [`tiling`]: the reusable tile plan (grid, blend, crop) shared with the parallel decode.
//! - [`tile_parallel`]: `tiles` mode, the tile plan spread over ranks (balanced runs, strip exchange).
//! - [`parallel`]: patch-parallel decode/encode entry points (`tiles` and `halo`) with live pieces.
//! - [`ops`], [`cpu_kernels`]: memory-lean CPU kernels (direct conv accumulated over time taps that
//!   read cache and chunk in place, fused RMS-norm + SiLU, fused residual adds) and the generic
//!   candle path used on CUDA.

pub mod autoencoder;
pub mod blocks;
pub mod cache;
pub mod config;
pub mod cpu_kernels;
pub mod decoder;
pub mod encoder;
pub mod layers;
pub mod ops;
pub mod parallel;
pub mod split;
pub mod tile_parallel;
pub mod tiling;

pub use autoencoder::{AutoencoderKLWan, Moments, VaeParts, VaeProgress};
pub use config::Config;
pub use tiling::{TilePlan, Tiling};

use std::path::Path;

use candle_core::{DType, Device};

use crate::weights::{self, Checkpoint, WeightsError};

/// Errors loading a VAE folder.
#[derive(Debug, thiserror::Error)]
pub enum VaeLoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("invalid VAE config in {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("VAE weights in {path} do not match its config.json: {msg}")]
    Mismatch { path: String, msg: String },
}

/// Loads the VAE of `model` (a pipeline root holding `vae/`, or the `vae/` folder itself).
pub fn load(model: &Path, parts: VaeParts, dtype: DType, device: &Device) -> Result<AutoencoderKLWan, VaeLoadError> {
    let dir = weights::component_dir(model, "vae")?;
    let cfg: Config = weights::load_config(&dir)?;
    let path = dir.display().to_string();
    cfg.validate().map_err(|msg| VaeLoadError::Config { path: path.clone(), msg })?;
    let ckpt = Checkpoint::open(&dir)?;
    load_weights(&cfg, &weights::ComponentWeights::diffusers(ckpt.files), parts, dtype, device)
}

/// Loads a VAE of config `cfg` from `weights` (any file layout the model spec resolved: a diffusers
/// folder, a single diffusers-named file, a Wan-native Wan2.1 VAE file).
pub fn load_weights(
    cfg: &Config,
    weights: &weights::ComponentWeights,
    parts: VaeParts,
    dtype: DType,
    device: &Device,
) -> Result<AutoencoderKLWan, VaeLoadError> {
    let path = weights.files.first().map(|f| f.display().to_string()).unwrap_or_default();
    cfg.validate().map_err(|msg| VaeLoadError::Config { path: path.clone(), msg })?;
    let vb = weights.var_builder(dtype, device)?;
    AutoencoderKLWan::new(cfg, parts, vb).map_err(|e| VaeLoadError::Mismatch { path, msg: e.to_string() })
}
