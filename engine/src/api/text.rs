//! Prompt encoding in this process: the UMT5 text encoder and the on-disk prompt-embedding cache
//! (`tessera encode-prompt`). Encoding split over workers goes through
//! [`Session::encode_prompts`](super::Session::encode_prompts) instead.

pub use crate::model_spec::TextModel;
pub use crate::text::{embed_prompts, PromptCache, TextEncoderOptions, TextError, DEFAULT_MAX_SEQUENCE_LENGTH};
