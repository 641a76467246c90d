//! HunyuanVideo 1.5 VAE (`AutoencoderKLHunyuanVideo15`), exact to diffusers 0.42.1
//! (`models/autoencoders/autoencoder_kl_hunyuanvideo15.py`).
//!
//! - [`config`]: `config.json` schema (defaults = the released checkpoint) and the block structure.
//! - [`layers`]: the module tree's parts (causal conv with replicate padding, resnet, frame-causal
//!   attention, DCAE up/down samplers), chunk caches, and the row-slab padding of halo mode.
//! - [`encoder`], [`decoder`]: `HunyuanVideo15Encoder3D` / `Decoder3D` from a `VarBuilder` with the
//!   checkpoint's key names.
//! - [`autoencoder`]: decode/encode, streamed (bounded memory, equal to the whole-clip forward) or
//!   diffusers-tiled.
//! - [`parallel`]: patch-parallel decode/encode over a collective (`tiles` and `halo`).
//!
//! Shared with the Wan VAE (one concept, one place): the CPU conv and RMS-norm kernels
//! (`wan::vae::ops`), the tile plan and blend (`wan::vae::tiling`), the tiles-mode exchange
//! (`wan::vae::tile_parallel`), the row exchange (`wan::vae::split`), and `VaeParts`,
//! `VaeProgress`, `Moments`, `DecodedPiece`, `VaeLoadError`.

pub mod autoencoder;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod layers;
pub mod parallel;

pub use autoencoder::{AutoencoderKLHunyuanVideo15, Chunking};
pub use config::Config;

use std::path::Path;

use candle_core::{DType, Device};

use crate::models::wan::vae::{VaeLoadError, VaeParts};
use crate::weights::{self, Checkpoint};

/// diffusers' `_class_name` of this VAE in `vae/config.json`.
pub const CLASS_NAME: &str = "AutoencoderKLHunyuanVideo15";

/// Loads the VAE of `model` (a pipeline root holding `vae/`, or the `vae/` folder itself).
pub fn load(
    model: &Path,
    parts: VaeParts,
    dtype: DType,
    device: &Device,
) -> Result<AutoencoderKLHunyuanVideo15, VaeLoadError> {
    let dir = weights::component_dir(model, "vae")?;
    let cfg: Config = weights::load_config(&dir)?;
    let path = dir.display().to_string();
    cfg.validate().map_err(|msg| VaeLoadError::Config { path: path.clone(), msg })?;
    let ckpt = Checkpoint::open(&dir)?;
    let vb = ckpt.var_builder(dtype, device)?;
    AutoencoderKLHunyuanVideo15::new(&cfg, parts, vb).map_err(|e| VaeLoadError::Mismatch { path, msg: e.to_string() })
}
