//! Tessera engine: Wan model code, checkpoint loading and the multi-device runtime.
//!
//! - [`weights`]: diffusers folder discovery, mmap'd safetensors → `VarBuilder`, manifest checks.
//! - [`models`]: the networks (Wan VAE, …), candle-transformers style.
//! - [`random_weights`]: seeded random checkpoints of the real architectures (`make-model`).
//! - [`tensor_io`]: reading/writing named tensors for the CLI (atomic writes).

pub mod models;
pub mod random_weights;
pub mod tensor_io;
pub mod weights;
