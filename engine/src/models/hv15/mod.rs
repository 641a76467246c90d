//! HunyuanVideo 1.5 (diffusers `HunyuanVideo15*`), exact to diffusers 0.42.1.
//!
//! - [`vae`]: `AutoencoderKLHunyuanVideo15`, decode and encode (untiled, streamed, tiled) and its
//!   patch-parallel modes.
//! - [`transformer`]: `HunyuanVideo15Transformer3DModel` on one device.

pub mod transformer;
pub mod vae;
