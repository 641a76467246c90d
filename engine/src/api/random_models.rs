//! Model folders with seeded random weights of the real architectures: `tessera make-model` and
//! the benchmarks' checkpoints (the studio's demo is a trained folder, `assets/demo`). Named re-exports of
//! [`crate::pipeline_folder`] and [`crate::random_weights`].

pub use crate::pipeline_folder::{
    write_hv15_pipeline, write_json, write_pipeline, Arch, FolderError, Hv15Spec, PipelineSpec, DIFFUSERS_VERSION,
};
pub use crate::random_weights::{
    standard_normal, write_hv15_vae, write_transformer, write_vae, StoreDtype, WrittenComponent, DIFFUSERS_SHARD_BYTES,
};
