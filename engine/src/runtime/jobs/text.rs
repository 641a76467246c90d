//! The sharded text-encoder job: UMT5 split by layer over every rank of the world
//! (`text::sharded`), embeddings on every rank; rank 0 sends them back as `JobData`.

use candle_core::DType;

use super::{JobCtx, JobError};
use crate::runtime::protocol::{EncodePromptSpec, JobData, JobOutput, WireTensor, WorkerEvent};
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
        embed_prompts_sharded(&spec.text, &prompts, &opts, cache.as_ref(), ctx.comm().clone())?
    };
    ctx.add_weights_bytes(weights_bytes);
    if ctx.rank().0 == 0 {
        for (name, t) in ["prompt_embeds", "negative_prompt_embeds"].iter().zip(embeds) {
            let tensor = WireTensor::from_tensor(&t.to_dtype(DType::F32)?)?;
            ctx.emit(WorkerEvent::Data(JobData::Tensor { name: name.to_string(), tensor }));
        }
    }
    ctx.comm().barrier()?;
    Ok(JobOutput::None)
}
