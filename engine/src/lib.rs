//! Tessera engine: Wan model code, checkpoint loading and the multi-device runtime.
//!
//! - [`weights`]: diffusers folder discovery, mmap'd safetensors → `VarBuilder`, manifest checks.
//! - [`models`]: the networks (Wan VAE, …), candle-transformers style.
//! - [`tensor_io`]: reading/writing named tensors for the CLI (atomic writes).
//! - [`parallel`]: ranks and the `Collective` data plane (LocalSocket, threads, NCCL).
//! - [`runtime`]: one `tessera-worker` process per device: supervisor, control protocol, telemetry.
//! - [`alloc`]: counting global allocator used by the worker for heap telemetry.

pub mod alloc;
pub mod models;
pub mod parallel;
pub mod runtime;
pub mod tensor_io;
pub mod weights;
