//! A VAE of either family, chosen by `vae/config.json`'s `_class_name` ([`Family::of_vae`]): what the
//! VAE jobs and the `tessera vae` tool load. Each arm keeps its own model type; this only forwards
//! the calls both share (decode/encode, tiled or not, and their patch-parallel forms).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::hv15::vae::AutoencoderKLHunyuanVideo15;
use super::wan::vae::parallel::DecodedPiece;
use super::wan::vae::{AutoencoderKLWan, Moments, Tiling, VaeLoadError, VaeParts, VaeProgress};
use crate::model_spec::{Family, ModelSpec};
use crate::parallel::comm::Collective;
use crate::parallel::plan::VaeMode;

#[derive(Debug, Clone)]
pub enum Vae {
    Wan(AutoencoderKLWan),
    Hv15(AutoencoderKLHunyuanVideo15),
}

/// The dtype a worker runs a VAE of `family` in on `device`: bf16 for a Wan VAE on CUDA (its norm
/// statistics are f32, as in diffusers, and its last norm and conv run in f32, see
/// `wan::vae::decoder`), f32 everywhere else — the CPU kernels are f32, and HunyuanVideo 1.5's bf16
/// path is not validated. `TESSERA_VAE_DTYPE=f32` keeps a CUDA Wan VAE in f32.
pub fn run_dtype(family: Family, device: &Device) -> DType {
    run_dtype_on(family, device.is_cuda())
}

/// [`run_dtype`] for a CUDA device or not (the planner asks without opening one).
pub fn run_dtype_on(family: Family, cuda: bool) -> DType {
    let f32_forced = std::env::var("TESSERA_VAE_DTYPE").is_ok_and(|v| v.trim().eq_ignore_ascii_case("f32"));
    match family {
        Family::Wan if cuda && !f32_forced => DType::BF16,
        _ => DType::F32,
    }
}

/// The family of the VAE at `model` (a VAE file is a Wan VAE: only those come as single files).
pub fn family_of(model: &Path) -> std::result::Result<Family, VaeLoadError> {
    if model.is_file() {
        return Ok(Family::Wan);
    }
    let dir = crate::weights::component_dir(model, "vae")?;
    Family::detect(&dir).map_err(|e| VaeLoadError::Config { path: dir.display().to_string(), msg: e.to_string() })
}

/// Loads the VAE of `model` (a pipeline root holding `vae/`, or the VAE folder itself), whichever
/// family it is.
pub fn load(model: &Path, parts: VaeParts, dtype: DType, device: &Device) -> std::result::Result<Vae, VaeLoadError> {
    // The component folder first: its absence gets the loaders' own "no `vae/` folder" message.
    let dir = crate::weights::component_dir(model, "vae")?;
    let family = Family::detect(&dir)
        .map_err(|e| VaeLoadError::Config { path: dir.display().to_string(), msg: e.to_string() })?;
    Ok(match family {
        Family::Wan => Vae::Wan(super::wan::vae::load(model, parts, dtype, device)?),
        Family::HunyuanVideo15 => Vae::Hv15(super::hv15::vae::load(model, parts, dtype, device)?),
    })
}

/// The VAE of an inspected model, as the generate job loads it: Wan's from the spec's weights (any
/// key dialect), HunyuanVideo 1.5's from its `vae/` folder.
pub fn load_for_model(
    model: &ModelSpec,
    parts: VaeParts,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Vae, VaeLoadError> {
    Ok(match model.family {
        Family::Wan => Vae::Wan(super::wan::vae::load_weights(&model.vae, &model.vae_weights(), parts, dtype, device)?),
        Family::HunyuanVideo15 => Vae::Hv15(super::hv15::vae::load(&model.root, parts, dtype, device)?),
    })
}

/// As [`load`], and also a Wan VAE given as a single file (diffusers or Wan-native names), or any
/// Wan VAE with `config` (a `config.json` or a folder with one) in place of its own
/// (`model_spec::vae_component`).
pub fn load_with_config(
    model: &Path,
    config: Option<&Path>,
    parts: VaeParts,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Vae, VaeLoadError> {
    if !model.is_file() && config.is_none() {
        return load(model, parts, dtype, device);
    }
    let (cfg, weights) = crate::model_spec::vae_component(model, config)
        .map_err(|e| VaeLoadError::Config { path: model.display().to_string(), msg: e.to_string() })?;
    Ok(Vae::Wan(super::wan::vae::load_weights(&cfg, &weights, parts, dtype, device)?))
}

impl Vae {
    /// The Wan VAE, if this is one (the Wan image conditions need its latent statistics).
    pub fn as_wan(&self) -> Option<&AutoencoderKLWan> {
        match self {
            Vae::Wan(m) => Some(m),
            Vae::Hv15(_) => None,
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Vae::Wan(_) => Family::Wan,
            Vae::Hv15(_) => Family::HunyuanVideo15,
        }
    }

    /// `vae.decode(z).sample` → `[B, 3, F, H, W]` f32 on the host (Wan clamps to [-1, 1], HV1.5 does
    /// not, as in diffusers).
    pub fn decode(&self, z: &Tensor, tiling: Option<&Tiling>, progress: &mut dyn FnMut(VaeProgress)) -> Result<Tensor> {
        match self {
            Vae::Wan(m) => m.decode(z, tiling, progress),
            Vae::Hv15(m) => m.decode(z, tiling, progress),
        }
    }

    /// `vae.encode(video).latent_dist` (mean, logvar).
    pub fn encode(
        &self,
        video: &Tensor,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        match self {
            Vae::Wan(m) => m.encode(video, tiling, progress),
            Vae::Hv15(m) => m.encode(video, tiling, progress),
        }
    }

    /// Patch-parallel decode over `comm`; the video on rank 0.
    pub fn decode_parallel(
        &self,
        z: &Tensor,
        comm: &Arc<dyn Collective>,
        mode: VaeMode,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
        on_piece: &mut dyn FnMut(DecodedPiece<'_>),
    ) -> Result<Option<Tensor>> {
        match self {
            Vae::Wan(m) => m.decode_parallel(z, comm, mode, tiling, progress, on_piece),
            Vae::Hv15(m) => m.decode_parallel(z, comm, mode, tiling, progress, on_piece),
        }
    }

    /// Patch-parallel encode over `comm`; the moments on every rank.
    pub fn encode_parallel(
        &self,
        video: &Tensor,
        comm: &Arc<dyn Collective>,
        mode: VaeMode,
        tiling: Option<&Tiling>,
        progress: &mut dyn FnMut(VaeProgress),
    ) -> Result<Moments> {
        match self {
            Vae::Wan(m) => m.encode_parallel(video, comm, mode, tiling, progress),
            Vae::Hv15(m) => m.encode_parallel(video, comm, mode, tiling, progress),
        }
    }
}
