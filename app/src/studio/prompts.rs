//! Prompt embeddings for a run, as the `Generate` job takes them: encoded on the host (text encoder
//! placement `cpu`), by the worker world itself (`sharded`: `Job::EncodePrompt` first), or — for a
//! model folder without a text encoder, i.e. the demo — seeded stand-ins derived from the prompt
//! text, so the same prompt gives the same video (the UI says the demo's pictures are noise).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tessera_engine::parallel::comm::wire::{tensor_to_bytes, WireDType};
use tessera_engine::parallel::plan::TextEncoderPlacement;
use tessera_engine::pipeline::sampling;
use tessera_engine::runtime::protocol::{EmbedsSource, EncodePromptSpec, Job, WireTensor};
use tessera_engine::runtime::Supervisor;
use tessera_engine::text::{self, PromptCache, TextEncoderOptions, DEFAULT_MAX_SEQUENCE_LENGTH};

use super::model_info::ModelInfo;
use super::runner::RunRequest;

/// Tokens of the stand-in embeddings (any length works: cross-attention takes any).
const STANDIN_TOKENS: usize = 16;

/// The texts a run encodes: the prompt, then the negative prompt when guidance runs (`""` default).
fn texts(request: &RunRequest) -> Vec<String> {
    let mut texts = vec![request.prompt.clone()];
    if request.params.guidance > 1.0 {
        texts.push(request.negative_prompt.clone());
    }
    texts
}

fn inline(t: &Tensor) -> Result<EmbedsSource, String> {
    let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
    let bytes = tensor_to_bytes(&t).map_err(|e| e.to_string())?;
    Ok(EmbedsSource::Inline(WireTensor { dtype: WireDType::F32, shape: t.dims().to_vec(), bytes }))
}

/// FNV-1a of the text: a stable seed (std's hasher may change between Rust versions).
fn text_seed(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Seeded `(1, 16, text_dim)` embeddings per text, scaled like UMT5 outputs (unit variance).
fn standins(texts: &[String], text_dim: usize) -> Result<Vec<Tensor>, String> {
    texts
        .iter()
        .map(|t| sampling::initial_noise(text_seed(t), &[1, STANDIN_TOKENS, text_dim], &Device::Cpu))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// The prompt and negative sources for `request` on `root`. `world` runs the sharded encoder.
pub fn embeds(
    request: &RunRequest,
    info: &ModelInfo,
    root: &Path,
    world: &mut Supervisor,
    work: &Path,
) -> Result<(EmbedsSource, Option<EmbedsSource>), String> {
    let texts = texts(request);
    let tensors = if !info.has_text_encoder {
        if !request.is_demo() {
            return Err(format!(
                "Model: no text_encoder/ and tokenizer/ in {}; add them (the diffusers folder has them) to use prompts",
                root.display()
            ));
        }
        standins(&texts, info.text_dim)?
    } else if request.plan.text_encoder == TextEncoderPlacement::Sharded {
        let out = work.join("embeds.safetensors");
        let spec = EncodePromptSpec {
            model: root.to_path_buf(),
            prompts: texts.clone(),
            max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
            cache_dir: PromptCache::default_dir(),
            out: out.clone(),
        };
        world.run_job(Job::EncodePrompt(spec), |_| {}).map_err(|e| super::runner::explain(&e))?;
        let file = |name: &str| EmbedsSource::File { path: out.clone(), name: name.into() };
        let negative = (texts.len() > 1).then(|| file("negative_prompt_embeds"));
        return Ok((file("prompt_embeds"), negative));
    } else {
        let opts = TextEncoderOptions {
            device: Device::Cpu,
            dtype: Some(DType::F32),
            max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
        };
        let cache = PromptCache::default_dir().map(PromptCache::new);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        text::embed_prompts(root, &refs, &opts, cache.as_ref()).map_err(|e| format!("encoding the prompts: {e}"))?
    };
    let mut it = tensors.iter();
    let prompt = inline(it.next().ok_or("no prompt embeddings")?)?;
    let negative = it.next().map(inline).transpose()?;
    Ok((prompt, negative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standins_are_stable_per_text() {
        let a = standins(&["a fox".into(), "".into()], 32).unwrap();
        let b = standins(&["a fox".into()], 32).unwrap();
        assert_eq!(a[0].dims(), &[1, STANDIN_TOKENS, 32]);
        let diff =
            |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&a[0], &b[0]), 0.0);
        assert!(diff(&a[0], &a[1]) > 1.0, "different prompts, different embeddings");
    }
}
