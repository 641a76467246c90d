//! Tessera engine: Wan model code, checkpoint loading and the multi-device runtime.
//!
//! - [`weights`]: diffusers folder discovery, mmap'd safetensors → `VarBuilder`, manifest checks.
//! - [`models`]: the networks (Wan VAE, …), candle-transformers style.
//! - [`scheduler`]: UniPC (flow) and FlowMatchEuler samplers from `scheduler_config.json`.
//! - [`text`]: prompt cleaning, tokenizer, UMT5 prompt embeddings and their on-disk cache.
//! - [`tensor_io`]: reading/writing named tensors for the CLI (atomic writes).

pub mod models;
pub mod scheduler;
pub mod tensor_io;
pub mod text;
pub mod weights;
