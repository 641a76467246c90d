//! Wan DiT: diffusers `WanTransformer3DModel` (Wan2.1 1.3B/14B, Wan2.2 TI2V-5B, T2V/I2V-A14B).
//! Upstream: huggingface/diffusers@58eb52c0 `src/diffusers/models/transformers/transformer_wan.py`
//! (model 507-735, blocks 419-504, RoPE 354-416).
//!
//! - [`config`]: `config.json`, presets, the `make-model` config writer.
//! - [`embeddings`]: patch, timestep, text and (Wan2.1 I2V) image embeddings.
//! - [`rope`]: 3-axis rotary tables, built per forward for the tokens in use.
//! - [`attention`]: q/k/v with QK RMSNorm across heads; the [`AttentionBackend`] seam and the
//!   chunked online-softmax core.
//! - [`modulation`]: per-run timestep conditioning (TI2V per-token timesteps without `(B, L, 6, D)`).
//! - [`block`]: one transformer block; [`model`]: stem, blocks, output head, unpatchify.
//! - [`ulysses`]: sequence shards (with padding) and the all-to-all attention backend.
//! - [`sharded`]: one rank's transformer: resident or FSDP-gathered blocks, optional Ulysses.
//! - [`bench`]: forward timing on random weights.
//!
//! ```no_run
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use tessera_engine::models::wan::transformer::WanTransformer3DModel;
//! let dev = Device::Cpu;
//! let model = WanTransformer3DModel::load("model/transformer".as_ref(), DType::F32, &dev)?;
//! let latents = Tensor::randn(0f32, 1., (1, 48, 3, 16, 16), &dev)?;
//! let t = Tensor::new(&[999f32], &dev)?;
//! let text = Tensor::zeros((1, 512, 4096), DType::F32, &dev)?;
//! let noise_pred = model.forward(&latents, &t, &text)?; // (1, 48, 3, 16, 16)
//! # Ok(()) }
//! ```

pub mod attention;
pub mod bench;
pub mod block;
pub mod config;
pub mod embeddings;
pub mod model;
pub mod modulation;
pub mod norm;
pub mod rope;
pub mod sharded;
pub mod ulysses;

pub use attention::{AttentionBackend, ChunkedAttention};
pub use config::{transformer_config_for_arch, Config};
pub use model::{Prepared, WanStem, WanTransformer3DModel};
pub use sharded::{BlockSource, ShardOptions, ShardedTransformer};
