//! `--text-encoder-on sharded`: UMT5 split by layer over the ranks of a collective, so no rank ever
//! holds more than ~1/N of the 5.7 B-parameter encoder (never a full copy per GPU).
//!
//! Rank `r` holds layers `split(num_layers, N)[r]`; rank 0 also holds the token embedding and the
//! last layer-holding rank the final norm (ranks beyond the layer count hold nothing). A prompt's hidden states `(1, len, d_model)` travel rank to rank
//! (`send`/`recv`), and the finished embeddings are broadcast so every rank can condition its part
//! of the denoise.
//!
//! Why by layer rather than FSDP-style gathering: the encoder runs once per prompt, so the cost that
//! matters is bytes moved. Gathering every layer's weights to every rank moves the whole model
//! (11.4 GB in bf16) N−1 times; passing the activations moves `len × d_model` floats per hop (≈ 8 MB
//! for 512 tokens). Memory per rank is the same 1/N either way.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Embedding;

use super::cache::PromptCache;
use super::clean::prompt_clean;
use super::encoder::{cache_keys, resolve_dtype, zero_pad_rows, TextEncoderOptions};
use super::tokenizer::PromptTokenizer;
use super::TextError;
use crate::model_spec::TextModel;
use crate::models::umt5::attention::{AttentionInputs, RmsNorm};
use crate::models::umt5::{self, UMT5Layers};
use crate::parallel::comm::Collective;
use crate::parallel::Rank;
use crate::weights::RecordingBackend;

/// Layers of each rank: contiguous, as even as possible, earlier ranks taking the remainder.
pub fn layer_split(num_layers: usize, ranks: usize) -> Vec<Range<usize>> {
    let ranks = ranks.max(1);
    let (base, extra) = (num_layers / ranks, num_layers % ranks);
    let mut start = 0;
    (0..ranks)
        .map(|r| {
            let n = base + usize::from(r < extra);
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}

/// This rank's part of a layer-sharded UMT5 encoder.
pub struct ShardedTextEncoder {
    tokenizer: PromptTokenizer,
    cfg: umt5::Config,
    embed_tokens: Option<Embedding>,
    layers: UMT5Layers,
    final_norm: Option<RmsNorm>,
    comm: Arc<dyn Collective>,
    shard: LayerShard,
    device: Device,
    dtype: DType,
    max_sequence_length: usize,
    weights_bytes: u64,
}

impl ShardedTextEncoder {
    /// Loads this rank's layers (and the embedding on rank 0, the final norm on the last rank).
    /// Every rank of `comm` must call it.
    pub fn load(model: &TextModel, opts: &TextEncoderOptions, comm: Arc<dyn Collective>) -> Result<Self, TextError> {
        if opts.max_sequence_length < 2 {
            return Err(TextError::BadLength(opts.max_sequence_length));
        }
        let tokenizer = PromptTokenizer::from_path(&model.tokenizer)?;
        let cfg = model.config()?;
        let dtype = resolve_dtype(&model.files()?, opts.dtype)?;
        let shard = LayerShard::new(cfg.num_layers, comm.rank().0, comm.world_size());
        let vb = model.weights()?.var_builder(dtype, &opts.device)?;
        let embed_tokens = shard.is_first().then(|| umt5::encoder::embedding(&cfg, &vb)).transpose()?;
        let layers = UMT5Layers::new(&cfg, &vb, shard.layers.clone())?;
        let final_norm = shard
            .is_last()
            .then(|| RmsNorm::new(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("encoder").pp("final_layer_norm")))
            .transpose()?;
        let weights_bytes = shard_bytes(&cfg, shard.layers.len(), shard.is_first(), shard.is_last(), dtype)?;
        let gb = weights_bytes as f64 / 1e9;
        tracing::info!(rank = shard.rank, layers = ?shard.layers, gb, "loaded text encoder shard");
        Ok(Self {
            tokenizer,
            cfg,
            embed_tokens,
            layers,
            final_norm,
            comm,
            shard,
            device: opts.device.clone(),
            dtype,
            max_sequence_length: opts.max_sequence_length,
            weights_bytes,
        })
    }

    /// Bytes of encoder weights this rank holds.
    pub fn weights_bytes(&self) -> u64 {
        self.weights_bytes
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `prompt_embeds` `(1, max_sequence_length, d_model)` f32 on every rank (collective).
    pub fn encode(&self, prompt: &str) -> Result<Tensor, TextError> {
        let tokens = self.tokenizer.encode(&prompt_clean(prompt), self.max_sequence_length)?;
        let len = tokens.len;
        let padded = [1, self.max_sequence_length, self.cfg.d_model];
        let embed = || -> Result<Tensor, TextError> {
            let embed = self.embed_tokens.as_ref().ok_or_else(|| candle_core::Error::msg("only rank 0 embeds"))?;
            let ids = Tensor::new(&tokens.ids[..len], &self.device)?.unsqueeze(0)?;
            let max_id = tokens.ids[..len].iter().copied().max().unwrap_or(0) as usize;
            if max_id >= self.cfg.vocab_size {
                return Err(TextError::Model(candle_core::Error::Msg(format!(
                    "token id {max_id} is outside the text encoder's vocabulary of {} (tokenizer and text_encoder do not match)",
                    self.cfg.vocab_size
                ))));
            }
            Ok(embed.forward(&ids)?.to_dtype(DType::F32)?)
        };
        // Only the real tokens run, as in the single-device encoder (same rows, less work).
        let layers = |xs: Tensor| -> Result<Tensor, TextError> {
            let inputs = AttentionInputs::new(&self.cfg, len, None, &self.device)?;
            Ok(self.layers.forward(&xs, &inputs)?)
        };
        let finish = |xs: Tensor| -> Result<Tensor, TextError> {
            let norm = self
                .final_norm
                .as_ref()
                .ok_or_else(|| candle_core::Error::msg("only the last holder has the final norm"))?;
            let hidden = norm.forward(&xs)?.to_dtype(DType::F32)?.to_dtype(self.dtype)?.to_dtype(DType::F32)?;
            Ok(zero_pad_rows(&hidden, self.max_sequence_length)?.to_device(&Device::Cpu)?)
        };
        self.shard.pass(self.comm.as_ref(), &self.device, &[1, len, self.cfg.d_model], &padded, embed, layers, finish)
    }
}

/// Where one rank stands in a model split by layer over a collective: ranks `0..holders` hold
/// `layer_split(num_layers, holders)`, rank 0 also the embedding, the last holder whatever turns
/// the final hidden state into the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerShard {
    pub rank: usize,
    /// All ranks unless the world has more ranks than layers: the extra ranks hold nothing and
    /// only receive the result (the world's size is the denoiser's choice, not the encoder's).
    pub holders: usize,
    /// This rank's layers (empty beyond the holders).
    pub layers: Range<usize>,
}

impl LayerShard {
    pub fn new(num_layers: usize, rank: usize, world: usize) -> Self {
        let holders = world.min(num_layers).max(1);
        let layers = layer_split(num_layers, holders).get(rank).cloned().unwrap_or(0..0);
        Self { rank, holders, layers }
    }

    /// Holds the embedding and starts every pass.
    pub fn is_first(&self) -> bool {
        self.rank == 0
    }

    /// Makes the result of every pass.
    pub fn is_last(&self) -> bool {
        self.rank + 1 == self.holders
    }

    /// One prompt through the split model (collective; every rank of `comm` calls it): rank 0
    /// starts from `embed()`, each later holder from the hidden state `hidden` (f32) its
    /// predecessor sends, `layers` runs this rank's layers, and the last holder's `finish` makes
    /// the result (f32 on the host, `out`), broadcast so every rank returns it. Hidden states
    /// travel as f32 whatever the run dtype: the conversion is exact, and both ends agree on it.
    #[allow(clippy::too_many_arguments)]
    pub fn pass(
        &self,
        comm: &dyn Collective,
        device: &Device,
        hidden: &[usize],
        out: &[usize],
        embed: impl FnOnce() -> Result<Tensor, TextError>,
        layers: impl FnOnce(Tensor) -> Result<Tensor, TextError>,
        finish: impl FnOnce(Tensor) -> Result<Tensor, TextError>,
    ) -> Result<Tensor, TextError> {
        let placeholder = || Tensor::zeros(out, DType::F32, &Device::Cpu);
        let result = if self.rank >= self.holders {
            placeholder()?
        } else {
            let xs = match self.rank {
                0 => embed()?,
                r => comm.recv(Rank(r - 1), hidden, DType::F32)?.to_device(device)?,
            };
            let xs = layers(xs)?;
            if self.is_last() {
                finish(xs)?
            } else {
                comm.send(&xs.to_dtype(DType::F32)?.to_device(&Device::Cpu)?, Rank(self.rank + 1))?;
                placeholder()?
            }
        };
        Ok(comm.broadcast(&result, Rank(self.holders - 1))?)
    }
}

/// Bytes of one rank's shard: its layers (measured on a recording build of one layer), plus the
/// embedding on the first rank and the final norm on the last.
fn shard_bytes(cfg: &umt5::Config, layers: usize, first: bool, last: bool, dtype: DType) -> Result<u64, TextError> {
    let rec = RecordingBackend::new();
    UMT5Layers::new(cfg, &rec.var_builder(dtype, &Device::Cpu), 0..1.min(cfg.num_layers))?;
    let per_layer: usize = rec.requested().values().map(|s| s.iter().product::<usize>()).sum();
    let mut elems = per_layer * layers;
    if first {
        elems += cfg.vocab_size * cfg.d_model;
    }
    if last {
        elems += cfg.d_model;
    }
    Ok((elems * dtype.size_in_bytes()) as u64)
}

/// [`super::embed_prompts`] with the encoder sharded over `comm`: every rank returns every prompt's
/// embeddings. Rank 0 decides cache hits (and writes new entries); the encoder loads only on a miss.
pub fn embed_prompts_sharded(
    model: &TextModel,
    prompts: &[&str],
    opts: &TextEncoderOptions,
    cache: Option<&PromptCache>,
    comm: Arc<dyn Collective>,
) -> Result<(Vec<Tensor>, u64), TextError> {
    let (dtype, keys) = cache_keys(model, prompts, opts)?;
    let is_root = comm.rank() == Rank(0);
    let mut cached: Vec<Option<Tensor>> = match (cache, is_root) {
        (Some(c), true) => keys.iter().map(|k| c.get(k, &Device::Cpu)).collect::<Result<_, _>>()?,
        _ => vec![None; prompts.len()],
    };
    let hits: Vec<u8> = cached.iter().map(|c| u8::from(c.is_some())).collect();
    let hits = comm.broadcast(&Tensor::new(hits.as_slice(), &Device::Cpu)?, Rank(0))?.to_vec1::<u8>()?;
    let mut out = Vec::with_capacity(prompts.len());
    let mut weights_bytes = 0;
    let encoder = if hits.contains(&0) {
        let enc =
            ShardedTextEncoder::load(model, &TextEncoderOptions { dtype: Some(dtype), ..opts.clone() }, comm.clone())?;
        weights_bytes = enc.weights_bytes();
        Some(enc)
    } else {
        tracing::info!(n = prompts.len(), "prompt embeddings served from cache; text encoder not loaded");
        None
    };
    for (i, prompt) in prompts.iter().enumerate() {
        let embeds = match (&encoder, hits[i]) {
            (Some(enc), 0) => {
                let e = enc.encode(prompt)?;
                if let (Some(c), true) = (cache, is_root) {
                    c.put(&keys[i], &e)?;
                }
                e
            }
            _ => {
                // A hit: rank 0 has it; the others receive it.
                let local = match cached[i].take() {
                    Some(t) => t,
                    None => Tensor::zeros((1, opts.max_sequence_length, 1), DType::F32, &Device::Cpu)?,
                };
                let dims: Vec<u32> = local.dims().iter().map(|d| *d as u32).collect();
                let dims = comm.broadcast(&Tensor::new(dims.as_slice(), &Device::Cpu)?, Rank(0))?.to_vec1::<u32>()?;
                let shape: Vec<usize> = dims.iter().map(|d| *d as usize).collect();
                let local = if is_root { local } else { Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)? };
                comm.broadcast(&local.to_dtype(DType::F32)?, Rank(0))?
            }
        };
        out.push(embeds.to_device(&opts.device)?);
    }
    drop(encoder);
    Ok((out, weights_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_evenly_with_the_remainder_first() {
        assert_eq!(layer_split(24, 5), vec![0..5, 5..10, 10..15, 15..20, 20..24]);
        assert_eq!(layer_split(2, 2), vec![0..1, 1..2]);
        assert_eq!(layer_split(3, 1), vec![0..3]);
    }
}
