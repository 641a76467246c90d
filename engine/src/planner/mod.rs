//! The memory planner: from a model folder's config files, a request (size, frames, guidance,
//! image) and a [`ParallelPlan`](crate::parallel::plan::ParallelPlan), each rank's peak bytes in
//! each phase of the `Generate` job as it runs (`text_encode`, `load`, `encode_image`, `denoise`,
//! `decode`: the `--report` phase names), computed from first principles and checked against the
//! counting allocator's heap peaks of real CPU runs (README, "Memory planner").
//!
//! - [`model`]: the configs of a pipeline folder ([`ModelSpec`]).
//! - [`params`]: parameter counts per component from the configs.
//! - [`live`]: the allocation replay every working-set estimate is built on.
//! - [`dit`]: transformer weights per shard, FSDP gather, one block's activations, attention tiles.
//! - [`vae`]: the VAE decoder/encoder replay per chunk, slab (halo) or tile.
//! - [`hv15`]: HunyuanVideo 1.5's counts, dual-stream block and streamed VAE replays, phases.
//! - [`predict`]: phases per rank, with named terms (Wan); [`dispatch`]: the family's prediction.
//! - [`search`]: GPU capacities (`8x24GB`), fit checks and the cheapest plan that fits.
//! - [`preset`]: named plans in `presets/*.toml`.

pub mod dispatch;
pub mod dit;
pub mod hv15;
pub mod live;
pub mod model;
pub mod params;
pub mod predict;
pub mod preset;
pub mod search;
pub mod vae;

pub use dispatch::predict;
pub use model::{ModelSpec, ModelSpecError};
pub use predict::{Options, Prediction, Request, Target};
