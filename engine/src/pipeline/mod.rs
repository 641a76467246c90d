//! Wan pipelines on one device (diffusers `WanPipeline` / `WanImageToVideoPipeline`).
//!
//! - [`request`]: generation parameters and their validation against the model.
//! - [`sampling`]: noise, latent normalisation, per-token timesteps, CFG combine (free functions).
//! - [`image`]: input image preprocessing for image-to-video.
//! - [`denoise`]: the denoising loop (shared by one device and the sharded job) and its
//!   [`denoise::NoisePredictor`] seam.
//! - [`preview`]: the latent→RGB map of the live denoise previews (ComfyUI's factors per VAE family).
//! - [`sharded`]: the predictor of one rank of a parallel plan (CFG parallel, Ulysses, FSDP).
//! - [`wan`]: the single-device pipeline: loading, image conditioning, decode.
//! - [`hv15`]: the HunyuanVideo 1.5 text-to-video pipeline on one device (prompt embeddings given).

pub mod denoise;
pub mod hv15;
pub mod image;
pub mod preview;
pub mod request;
pub mod sampling;
pub mod sharded;
pub mod wan;

pub use denoise::PipelineProgress;
pub use request::{GenerateParams, ParamsError};
pub use wan::{GenerateOutput, PipelineError, PromptEmbeds, WanPipeline};
