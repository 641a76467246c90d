//! Prompt resolution for a [`super::Session`]: text through UMT5 or HunyuanVideo 1.5's Qwen2.5-VL
//! (on the host, or split by layer over the session's workers when the plan says `sharded`),
//! embeddings files, or seeded stand-ins. Every encoded text is kept in memory per (model, text),
//! on top of the on-disk prompt cache, so a second run with the same prompt encodes nothing.
//!
//! HunyuanVideo 1.5 prompts have two streams: MLLM (Qwen2.5-VL) states and ByT5 glyph states.
//! Its embeddings files use diffusers' argument names (`prompt_embeds`, `prompt_embeds_mask`,
//! `prompt_embeds_2`, `prompt_embeds_mask_2`, and `negative_…`); only valid rows go to the workers
//! (the transformer's trimmed context equals diffusers' masked one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::error::SessionError;
use super::request::{GenerationRequest, Prompt};
use crate::fields::Field;
use crate::model_spec::{ModelSpec, TextModel};
use crate::models::hv15::transformer::valid_rows;
use crate::parallel::plan::TextEncoderPlacement;
use crate::pipeline::request::RequestError;
use crate::pipeline::sampling;
use crate::runtime::protocol::{DeviceKind, EncodePromptSpec, Job, JobData, PromptEncoder, WireTensor};
use crate::runtime::{JobEvent, JobResult, Supervisor};
use crate::text::{self, PromptCache, TextEncoderOptions, DEFAULT_MAX_SEQUENCE_LENGTH};

/// Tokens of the stand-in embeddings (any length works: cross-attention takes any).
const STANDIN_TOKENS: usize = 16;

/// The generate job's prompt sources, and the text job's result when the world encoded them.
pub(crate) struct Resolved {
    pub prompt: WireTensor,
    pub negative: Option<WireTensor>,
    /// HunyuanVideo 1.5's glyph embeddings of the prompt and the negative (`None`: no glyph text).
    pub prompt_2: Option<WireTensor>,
    pub negative_2: Option<WireTensor>,
    pub text_job: Option<JobResult>,
}

/// Encoded texts of this session per (encoder, text, length), f32 on the host.
pub(crate) struct PromptMemory {
    encoded: HashMap<(TextModel, String, usize), Tensor>,
    /// HunyuanVideo 1.5 glyph (ByT5) embeddings per (model folder, prompt); `None`: no quoted text.
    glyphs: HashMap<(PathBuf, String), Option<Tensor>>,
    /// The on-disk cache folder (`None`: encode every new text).
    disk_cache: Option<PathBuf>,
}

impl PromptMemory {
    pub fn new(disk_cache: Option<PathBuf>) -> Self {
        Self { encoded: HashMap::new(), glyphs: HashMap::new(), disk_cache }
    }

    /// The prompt and (under CFG) negative sources of `req`; `world` runs the sharded encoder.
    pub fn resolve(
        &mut self,
        req: &GenerationRequest,
        model: &ModelSpec,
        world: &mut Supervisor,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Resolved, SessionError> {
        let negative = req.negative_prompt(model);
        let texts: Vec<&str> = [Some(&req.prompt), negative.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| match p {
                Prompt::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        if model.hv15.is_some() {
            return self.resolve_hv15(req, model, negative.as_ref(), world, on_event);
        }
        let max_len = model.demo.as_ref().and_then(|d| d.max_sequence_length).unwrap_or(DEFAULT_MAX_SEQUENCE_LENGTH);
        // `validate` refused prompt text for a model without an encoder; the stand-in text model
        // below is never used then (every prompt is a file or a stand-in).
        let text_model = model.text_model().unwrap_or_else(|| TextModel::in_folder(&model.root));
        let text_job = self.encode_missing(&text_model, &texts, max_len, req.plan.text_encoder, world, on_event)?;
        let text_dim = model.transformer.text_dim;
        let source = |p: &Prompt, field: Field, name: &str| -> Result<WireTensor, SessionError> {
            let t = match p {
                Prompt::Embeds(path) => embeds_file(path, field, name, text_dim)?,
                Prompt::Text(t) => self.get(&text_model, t, max_len)?,
                Prompt::StandIn(t) => standin(t, text_dim)?,
            };
            Ok(WireTensor::from_tensor(&t)?)
        };
        Ok(Resolved {
            prompt: source(&req.prompt, Field::PromptEmbeds, "prompt_embeds")?,
            negative: negative
                .as_ref()
                .map(|n| source(n, Field::NegativePromptEmbeds, "negative_prompt_embeds"))
                .transpose()?,
            prompt_2: None,
            negative_2: None,
            text_job,
        })
    }

    /// [`Self::resolve`] for HunyuanVideo 1.5: embeddings files (both streams), stand-ins, or text
    /// through its MLLM (Qwen2.5-VL on the host, or split by layer over `world` when the plan says
    /// `sharded`) and, for quoted text, its ByT5 glyph encoder (on the host: small).
    fn resolve_hv15(
        &mut self,
        req: &GenerationRequest,
        model: &ModelSpec,
        negative: Option<&Prompt>,
        world: &mut Supervisor,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Resolved, SessionError> {
        let Some(hv) = &model.hv15 else { return Err(SessionError::Input("not a HunyuanVideo 1.5 model".into())) };
        let (text_dim, glyph_dim) = (hv.transformer.text_embed_dim, hv.transformer.text_embed_2_dim);
        let mut texts: Vec<(&str, Field)> = Vec::new();
        for (p, field) in [(Some(&req.prompt), Field::Prompt), (negative, Field::NegativePrompt)] {
            if let Some(Prompt::Text(t)) = p {
                texts.push((t.as_str(), field));
            }
        }
        let max_len = text::hv15::MAX_LENGTH;
        let text_model = model.text_model().unwrap_or_else(|| TextModel::in_folder(&model.root));
        let key = |t: &str| (text_model.clone(), t.to_string(), max_len);
        let mut missing: Vec<&str> =
            texts.iter().map(|(t, _)| *t).filter(|t| !self.encoded.contains_key(&key(t))).collect();
        missing.dedup();
        // The on-disk cache first: the Qwen model (28 GB in f32 at the real size) is loaded only
        // for texts it does not hold, and what it encodes is stored for the next session.
        let disk = self.disk_cache.clone().map(PromptCache::new);
        let mut disk_keys = HashMap::new();
        if let (Some(cache), Some(_), false) = (&disk, model.text_model(), missing.is_empty()) {
            let on_cpu = req.plan.text_encoder == TextEncoderPlacement::Cpu || req.device == DeviceKind::Cpu;
            let dtype = text::hv15::run_dtype(&text_model, on_cpu)?;
            for t in &missing {
                let k = text::hv15::cache_key(&text_model, t, max_len, dtype)?;
                if let Some(e) = cache.get(&k, &Device::Cpu)? {
                    self.encoded.insert(key(t), e);
                }
                disk_keys.insert(t.to_string(), k);
            }
            missing.retain(|t| !self.encoded.contains_key(&key(t)));
            if missing.is_empty() {
                tracing::info!("HunyuanVideo 1.5 prompt embeddings served from cache; Qwen2.5-VL not loaded");
            }
        }
        let mut text_job = None;
        if !missing.is_empty() {
            let (encoder, tokenizer) = match (&model.components.text_encoder, &model.components.tokenizer) {
                (Some(e), Some(t)) => (e, t),
                _ => return Err(SessionError::Input("the model has no text_encoder/ and tokenizer/".into())),
            };
            let encoded = match req.plan.text_encoder {
                TextEncoderPlacement::Cpu => {
                    on_event(&JobEvent::Stage { message: "encoding the prompts (Qwen2.5-VL on the host)".into() });
                    let tok = text::hv15::MllmTokenizer::from_path(tokenizer)?;
                    let qwen = crate::models::qwen25vl_text::load(encoder, DType::F32, &Device::Cpu)
                        .map_err(text::TextError::from)?;
                    missing
                        .iter()
                        .map(|t| text::hv15::mllm_embeds(&qwen, &tok, t, max_len))
                        .collect::<Result<_, _>>()?
                }
                TextEncoderPlacement::Sharded => {
                    on_event(&JobEvent::Stage {
                        message: "encoding the prompts (Qwen2.5-VL split by layer over the workers)".into(),
                    });
                    let (encoded, job) =
                        encode_on_workers(world, &text_model, PromptEncoder::Hv15Mllm, &missing, max_len, on_event)?;
                    text_job = job;
                    encoded
                }
            };
            for (t, e) in missing.into_iter().zip(encoded) {
                if let (Some(cache), Some(k)) = (&disk, disk_keys.get(t)) {
                    cache.put(k, &e)?;
                }
                self.encoded.insert(key(t), e);
            }
        }
        // Quoted text goes through the ByT5 glyph encoder (on the host; small).
        let glyph_missing: Vec<&str> = texts
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| {
                text::hv15::glyph_text(t).is_some() && !self.glyphs.contains_key(&(model.root.clone(), t.to_string()))
            })
            .collect();
        if !glyph_missing.is_empty() {
            let root = &model.root;
            if !root.join("text_encoder_2/config.json").is_file() || !root.join("tokenizer_2").is_dir() {
                let field = texts.iter().find(|(t, _)| glyph_missing.contains(t)).map_or(Field::Prompt, |(_, f)| *f);
                return Err(RequestError::new(
                    field,
                    "quoted text in a HunyuanVideo 1.5 prompt is drawn by its ByT5 glyph encoder, and this folder has no text_encoder_2/ and tokenizer_2/: add them, drop the quotes or give prompt embeddings",
                )
                .into());
            }
            on_event(&JobEvent::Stage { message: "encoding the quoted text (ByT5 on the host)".into() });
            let glyph = text::byt5::GlyphEncoder::load(root, &Device::Cpu)?;
            for t in glyph_missing {
                let e = glyph.embeds(t, text::byt5::MAX_LENGTH)?;
                self.glyphs.insert((root.clone(), t.to_string()), e);
            }
        }
        let source = |p: &Prompt, field: Field, prefix: &str| -> Result<_, SessionError> {
            let (text, glyph) = match p {
                Prompt::Embeds(path) => hv15_embeds_file(path, field, prefix, text_dim, glyph_dim)?,
                Prompt::StandIn(t) => (standin(t, text_dim)?, None),
                Prompt::Text(t) => {
                    let glyph = self.glyphs.get(&(model.root.clone(), t.to_string())).cloned().flatten();
                    (self.get(&text_model, t, max_len)?, glyph)
                }
            };
            Ok((WireTensor::from_tensor(&text)?, glyph.map(|g| WireTensor::from_tensor(&g)).transpose()?))
        };
        let (prompt, prompt_2) = source(&req.prompt, Field::PromptEmbeds, "")?;
        let negative = negative.map(|n| source(n, Field::NegativePromptEmbeds, "negative_")).transpose()?;
        let (negative, negative_2) = negative.map_or((None, None), |(t, g)| (Some(t), g));
        Ok(Resolved { prompt, negative, prompt_2, negative_2, text_job })
    }

    /// Embeddings of `texts` with the text encoder `text` (encoding only those not in memory),
    /// `max_len` tokens each; `placement` says where the encoder runs. Also the world's text job,
    /// when it ran.
    pub fn encode(
        &mut self,
        text: &TextModel,
        texts: &[&str],
        max_len: usize,
        placement: TextEncoderPlacement,
        world: &mut Supervisor,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<(Vec<Tensor>, Option<JobResult>), SessionError> {
        let job = self.encode_missing(text, texts, max_len, placement, world, on_event)?;
        let tensors = texts.iter().map(|t| self.get(text, t, max_len)).collect::<Result<_, _>>()?;
        Ok((tensors, job))
    }

    fn get(&self, model: &TextModel, text: &str, max_len: usize) -> Result<Tensor, SessionError> {
        self.encoded
            .get(&(model.clone(), text.to_string(), max_len))
            .cloned()
            .ok_or_else(|| SessionError::Input(format!("the prompt {text:?} was not encoded")))
    }

    fn encode_missing(
        &mut self,
        model: &TextModel,
        texts: &[&str],
        max_len: usize,
        placement: TextEncoderPlacement,
        world: &mut Supervisor,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Option<JobResult>, SessionError> {
        let mut missing: Vec<&str> = Vec::new();
        for t in texts {
            if !self.encoded.contains_key(&(model.clone(), t.to_string(), max_len)) && !missing.contains(t) {
                missing.push(t);
            }
        }
        if missing.is_empty() {
            return Ok(None);
        }
        let cache_dir = self.disk_cache.clone();
        let (tensors, job) = match placement {
            TextEncoderPlacement::Cpu => {
                on_event(&JobEvent::Stage { message: "encoding the prompts (UMT5 on the host)".into() });
                let opts =
                    TextEncoderOptions { device: Device::Cpu, dtype: Some(DType::F32), max_sequence_length: max_len };
                let cache = cache_dir.map(PromptCache::new);
                (text::embed_prompts(model, &missing, &opts, cache.as_ref())?, None)
            }
            TextEncoderPlacement::Sharded => {
                on_event(&JobEvent::Stage { message: "encoding the prompts on the workers".into() });
                let encoder = PromptEncoder::Umt5 { cache_dir };
                encode_on_workers(world, model, encoder, &missing, max_len, on_event)?
            }
        };
        for (t, e) in missing.iter().zip(tensors) {
            self.encoded.insert((model.clone(), t.to_string(), max_len), e.to_dtype(DType::F32)?);
        }
        Ok(job)
    }
}

/// `texts` encoded by the world's text job with `encoder` (a prompt and a negative per job, what
/// the job takes), f32 on the host in order, and the last job's result (its `text_encode` phase
/// goes into the run's report).
fn encode_on_workers(
    world: &mut Supervisor,
    text: &TextModel,
    encoder: PromptEncoder,
    texts: &[&str],
    max_len: usize,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<(Vec<Tensor>, Option<JobResult>), SessionError> {
    let mut tensors = Vec::with_capacity(texts.len());
    let mut last = None;
    for pair in texts.chunks(2) {
        let spec = EncodePromptSpec {
            encoder: encoder.clone(),
            text: text.clone(),
            prompts: pair.iter().map(|t| t.to_string()).collect(),
            max_sequence_length: max_len,
        };
        let result = world.run_job(Job::EncodePrompt(spec), |e| on_event(e))?;
        for (_, data) in &result.data {
            if let JobData::Tensor { tensor, .. } = data {
                tensors.push(tensor.to_tensor(&Device::Cpu)?);
            }
        }
        last = Some(result);
    }
    if tensors.len() != texts.len() {
        return Err(SessionError::Input(format!(
            "the text encoder returned {} embeddings for {} prompts",
            tensors.len(),
            texts.len()
        )));
    }
    Ok((tensors, last))
}

/// Tensor `name` of an embeddings file, checked to be `(1, L, text_dim)`: read on the host (the
/// workers get it inline), so a wrong file is one clear message before any work.
fn embeds_file(path: &Path, field: Field, name: &str, text_dim: usize) -> Result<Tensor, SessionError> {
    let key = field.key();
    let t = crate::tensor_io::read_tensor(path, name, DType::F32, &Device::Cpu)
        .map_err(|e| RequestError::new(field, format!("«{key}» {}: {e}", path.display())))?;
    match t.dims() {
        [1, _, d] if *d == text_dim => Ok(t),
        dims => Err(RequestError::new(
            field,
            format!("«{key}» {}: `{name}` is {dims:?}; this model takes (1, L, {text_dim})", path.display()),
        )
        .into()),
    }
}

/// One branch of a HunyuanVideo 1.5 embeddings file (`prefix` "" or "negative_"): the valid rows
/// of `{prefix}prompt_embeds` `(1, L, text_dim)` (by `{prefix}prompt_embeds_mask` when present) and
/// of `{prefix}prompt_embeds_2` `(1, M, glyph_dim)` (by `{prefix}prompt_embeds_mask_2`; absent, or no
/// valid row: `None`, the pipeline's zeros with a zero mask).
fn hv15_embeds_file(
    path: &Path,
    field: Field,
    prefix: &str,
    text_dim: usize,
    glyph_dim: usize,
) -> Result<(Tensor, Option<Tensor>), SessionError> {
    let key = field.key();
    let bad = |msg: String| SessionError::from(RequestError::new(field, format!("«{key}» {}: {msg}", path.display())));
    let all = crate::tensor_io::read_all(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let rows = |name: String, mask: String, dim: usize| -> Result<Option<Tensor>, SessionError> {
        let Some(x) = all.get(&name) else { return Ok(None) };
        let x = x.to_dtype(DType::F32)?;
        let l = match x.dims() {
            [1, l, d] if *d == dim => *l,
            dims => return Err(bad(format!("`{name}` is {dims:?}; this model takes (1, L, {dim})"))),
        };
        let m = match all.get(&mask) {
            Some(m) if m.dims() == [1, l] => m.get(0)?,
            Some(m) => return Err(bad(format!("`{mask}` is {:?}; `{name}` needs (1, {l})", m.dims()))),
            None => Tensor::ones(l, DType::F32, &Device::Cpu)?,
        };
        Ok(valid_rows(&x.get(0)?, &m)?.map(|r| r.unsqueeze(0)).transpose()?)
    };
    let text = rows(format!("{prefix}prompt_embeds"), format!("{prefix}prompt_embeds_mask"), text_dim)?
        .ok_or_else(|| bad(format!("no `{prefix}prompt_embeds` with a valid (mask 1) token")))?;
    let glyph = rows(format!("{prefix}prompt_embeds_2"), format!("{prefix}prompt_embeds_mask_2"), glyph_dim)?;
    Ok((text, glyph))
}

/// FNV-1a of the text: a stable seed (std's hasher may change between Rust versions).
fn text_seed(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Seeded `(1, 16, text_dim)` embeddings for `text`, unit variance like UMT5 outputs.
pub(crate) fn standin(text: &str, text_dim: usize) -> candle_core::Result<Tensor> {
    sampling::initial_noise(text_seed(text), &[1, STANDIN_TOKENS, text_dim], &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standins_are_stable_per_text() {
        let a = standin("a fox", 32).unwrap();
        let b = standin("a fox", 32).unwrap();
        let c = standin("", 32).unwrap();
        assert_eq!(a.dims(), &[1, STANDIN_TOKENS, 32]);
        let diff =
            |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&a, &b), 0.0);
        assert!(diff(&a, &c) > 1.0, "different prompts, different embeddings");
    }
}
