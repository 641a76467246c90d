//! The sharded text-encoder job: UMT5 split by layer over every rank of the world
//! (`text::sharded`), embeddings on every rank, written by rank 0.

use candle_core::Device;

use super::{JobCtx, JobError};
use crate::runtime::protocol::{EncodePromptSpec, JobOutput};
use crate::tensor_io;
use crate::text::sharded::embed_prompts_sharded;
use crate::text::{PromptCache, TextEncoderOptions};

pub fn encode_prompt(ctx: &JobCtx, spec: &EncodePromptSpec) -> Result<JobOutput, JobError> {
    if spec.prompts.is_empty() || spec.prompts.len() > 2 {
        return Err(JobError::Invalid(format!(
            "the text-encoder job takes a prompt and optionally a negative prompt, got {} prompts",
            spec.prompts.len()
        )));
    }
    let opts =
        TextEncoderOptions { device: ctx.device().clone(), dtype: None, max_sequence_length: spec.max_sequence_length };
    let cache = spec.cache_dir.clone().map(PromptCache::new);
    let prompts: Vec<&str> = spec.prompts.iter().map(String::as_str).collect();
    let (embeds, weights_bytes) = {
        let _encode = ctx.phase("text_encode");
        embed_prompts_sharded(&spec.model, &prompts, &opts, cache.as_ref(), ctx.comm().clone())?
    };
    ctx.add_weights_bytes(weights_bytes);
    if ctx.rank().0 == 0 {
        let names = ["prompt_embeds", "negative_prompt_embeds"];
        let tensors: Vec<(&str, candle_core::Tensor)> = names
            .iter()
            .zip(embeds)
            .map(|(n, t)| Ok((*n, t.to_device(&Device::Cpu)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        tensor_io::write_atomic(&spec.out, &tensors)?;
    }
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}
