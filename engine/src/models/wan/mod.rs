//! Wan2.1 / Wan2.2 (diffusers `AutoencoderKLWan`, `WanTransformer3DModel`).
//! Upstream: huggingface/diffusers@58eb52c0 `models/autoencoders/autoencoder_kl_wan.py`,
//! `models/transformers/transformer_wan.py`.

pub mod checkpoint_keys;
pub mod lora;
pub mod transformer;
pub mod vae;
