//! Tools: what the tool commands (`tessera vae`, `tessera bench …`, `tessera make-model`) need beyond
//! a generation — one job on a world of workers, the Wan VAE and transformer in this process, and
//! tensor files. A generation never goes through here: it is a [`Session`](super::Session) call.
//!
//! Named re-exports only; [`vae`] and [`transformer`] keep the model modules' own names (`load`,
//! `Config`) under a module so they read the same as in the engine.

pub use crate::parallel::comm::check::{CheckSpec, CollectiveOp};
pub use crate::parallel::comm::wire::WireDType;
pub use crate::parallel::comm::ReduceOp;
pub use crate::pipeline::image::read_video_or_image;
pub use crate::runtime::protocol::{BenchRow, BenchSpec, VaeDecodeSpec, VaeEncodeSpec};
pub use crate::runtime::selftest::{run as run_selftest, SelftestReport, SelftestSpec};
pub use crate::runtime::{CommBackend, Job, JobOutput, JobResult, Supervisor, WorldSpec};
pub use crate::tensor_io::{read_all, read_tensor, take as take_tensor};
pub use crate::weights::load_config;

/// The Wan VAE in this process (`tessera vae` without workers, `bench vae`).
pub mod vae {
    pub use crate::models::wan::vae::ops::model_flops;
    pub use crate::models::wan::vae::{
        load, AutoencoderKLWan, Config, Moments, TilePlan, Tiling, VaeLoadError, VaeParts, VaeProgress,
    };
}

/// A VAE of either family (Wan, HunyuanVideo 1.5), picked from its `config.json` (`tessera vae`).
pub mod any_vae {
    pub use crate::models::vae::{load, load_with_config, Vae};
}

/// The Wan transformer in this process (`bench dit`).
pub mod transformer {
    pub use crate::models::wan::transformer::{transformer_config_for_arch, Config, WanTransformer3DModel};
}
