//! Tessera engine: Wan model code, checkpoint loading and the multi-device runtime.
//!
//! - [`weights`]: diffusers folder discovery, mmap'd safetensors → `VarBuilder`, manifest checks.
//! - [`models`]: the networks (Wan VAE, …), candle-transformers style.
//! - [`tensor_io`]: reading/writing named tensors for the CLI (atomic writes).

pub mod models;
pub mod tensor_io;
pub mod weights;
