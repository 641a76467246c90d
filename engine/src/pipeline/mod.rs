//! Wan pipelines on one device (diffusers `WanPipeline` / `WanImageToVideoPipeline`).
//!
//! - [`request`]: generation parameters and their validation against the model.
//! - [`sampling`]: noise, latent normalisation, per-token timesteps, CFG combine (free functions).
//! - [`image`]: input image preprocessing for image-to-video.
//! - [`wan`]: the denoising loop, expert switch, image conditioning and decode.

pub mod image;
pub mod request;
pub mod sampling;
pub mod wan;

pub use request::{GenerateParams, ParamsError};
pub use wan::{GenerateOutput, PipelineError, PipelineProgress, PromptEmbeds, WanPipeline};
