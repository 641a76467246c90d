//! The networks. One folder per model family; each part is a plain struct built from a `VarBuilder`.
//! [`vae`] picks a family's VAE from its config (the VAE jobs and tools run either).

pub mod hv15;
pub mod qwen25vl_text;
pub mod siglip;
pub mod umt5;
pub mod vae;
pub mod wan;
