//! Tessera engine: Wan model code, checkpoint loading and the multi-device runtime.
//!
//! - [`api`]: the front door the CLI and the studio use (model spec, request, session).
//! - [`model_spec`]: the one reader of a model on disk (family, variant, components, configs).
//! - [`fields`]: request field names for messages (CLI flags / studio labels).
//! - [`weights`]: diffusers folder discovery, mmap'd safetensors → `VarBuilder` (key renames, fp8,
//!   LoRA deltas merged at load), manifest checks.
//! - [`models`]: the networks (Wan VAE, Wan transformer, UMT5), candle-transformers style.
//! - [`scheduler`]: UniPC (flow) and FlowMatchEuler samplers from `scheduler_config.json`.
//! - [`text`]: prompt cleaning, tokenizer, UMT5 prompt embeddings and their on-disk cache.
//! - [`pipeline`]: text/image-to-video on one device (denoise loop, CFG, expert switch, decode).
//! - [`pipeline_folder`]: writing a whole pipeline folder with random weights (make-model, benchmarks).
//! - [`random_weights`]: seeded random checkpoints of the real architectures (`make-model`).
//! - [`media`]: saving video as MP4 (OpenH264 + muxide), PNG frames or safetensors.
//! - [`tensor_io`]: reading/writing named tensors for the CLI (atomic writes).
//! - [`parallel`]: ranks and the `Collective` data plane (LocalSocket, threads, NCCL).
//! - [`runtime`]: one `tessera-worker` process per device: supervisor, control protocol, telemetry.
//! - [`planner`]: per-rank peak memory predictions, plan search and presets (`tessera plan`).
//! - [`alloc`]: counting global allocator used by the worker for heap telemetry.

pub mod alloc;
pub mod api;
pub mod fields;
pub mod media;
pub mod model_spec;
pub mod models;
pub mod parallel;
pub mod pipeline;
pub mod pipeline_folder;
pub mod planner;
pub mod random_weights;
pub mod runtime;
pub mod scheduler;
pub mod tensor_io;
pub mod text;
pub mod weights;
