//! The sharded text-encoder job: UMT5 (`text::sharded`) or HunyuanVideo 1.5's Qwen2.5-VL
//! (`text::hv15_sharded`) split by layer over every rank of the world, embeddings on every rank;
//! rank 0 sends them back as `JobData`.

use candle_core::DType;

use super::{JobCtx, JobError};
use crate::runtime::protocol::{EncodePromptSpec, JobData, JobOutput, PromptEncoder, WireTensor, WorkerEvent};
use crate::text::hv15_sharded::embed_mllm_prompts_sharded;
use crate::text::sharded::embed_prompts_sharded;
use crate::text::{PromptCache, TextEncoderOptions};

pub fn encode_prompt(ctx: &JobCtx, spec: &EncodePromptSpec) -> Result<JobOutput, JobError> {
    if spec.prompts.is_empty() || spec.prompts.len() > 2 {
        return Err(JobError::Invalid(format!(
            "the text-encoder job takes a prompt and optionally a negative prompt, got {} prompts",
            spec.prompts.len()
        )));
    }
    let prompts: Vec<&str> = spec.prompts.iter().map(String::as_str).collect();
    let (embeds, weights_bytes) = {
        let _encode = ctx.phase("text_encode");
        match &spec.encoder {
            PromptEncoder::Umt5 { cache_dir } => {
                let opts = TextEncoderOptions {
                    device: ctx.device().clone(),
                    dtype: None,
                    max_sequence_length: spec.max_sequence_length,
                };
                let cache = cache_dir.clone().map(PromptCache::new);
                embed_prompts_sharded(&spec.text, &prompts, &opts, cache.as_ref(), ctx.comm().clone())?
            }
            PromptEncoder::Hv15Mllm => embed_mllm_prompts_sharded(
                &spec.text,
                &prompts,
                spec.max_sequence_length,
                ctx.device(),
                ctx.comm().clone(),
            )?,
        }
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
