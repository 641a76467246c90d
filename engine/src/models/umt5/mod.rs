//! UMT5-XXL, the text encoder of every Wan2.x model (transformers `UMT5EncoderModel`): a T5 v1.1
//! encoder whose **every** layer carries its own relative-position bias (candle's `t5.rs` shares
//! block 0's bias across layers, which is wrong for UMT5).
//!
//! - [`config`] — the `text_encoder/config.json` keys (transformers `UMT5Config`).
//! - [`attention`] — relative-position buckets and the unscaled self-attention.
//! - [`block`] — one encoder layer (RMSNorm → attention, RMSNorm → gated-GELU FFN).
//! - [`encoder`] — token embedding, the block stack and the final norm.
//!
//! The same code is transformers' `T5EncoderModel` (T5 v1.1, ByT5: HunyuanVideo 1.5's glyph
//! encoder) when `config.json` says `model_type: "t5"`: then only layer 0 has a relative bias and
//! every layer adds it (the one structural difference; T5 checkpoints saved by transformers 5 hold
//! `shared.weight` only, which [`encoder::embedding`] accepts).
//!
//! Each layer is built from its own `VarBuilder` prefix (`encoder.block.{i}`): [`UMT5Layers`]
//! holds any contiguous slice of layers and [`UMT5EncoderModel`] exposes `embed`,
//! `forward_blocks` and `final_norm`, so a caller can hold only some layers' weights at a time
//! (split across ranks, or loaded layer by layer).

pub mod attention;
pub mod block;
pub mod config;
pub mod encoder;

pub use attention::{AttentionInputs, UMT5Attention};
pub use block::UMT5Block;
pub use config::Config;
pub use encoder::{UMT5EncoderModel, UMT5Layers};
