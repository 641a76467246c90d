//! `--text-encoder-on sharded` for HunyuanVideo 1.5: the Qwen2.5-VL text model (7.07 B parameters,
//! 28 GB in f32) split by layer over the ranks of a collective, as [`super::sharded`] splits UMT5,
//! so the host never holds it and no rank holds more than its share.
//!
//! Only the layers the pipeline's hidden state needs are split and loaded: `hidden_states[-3]` is
//! the output of the first `num_hidden_layers − 2` layers ([`super::hv15::layers_taken`]), so the
//! last two layers and the final norm are never read. Rank 0 holds the token embedding; holder
//! `r` holds layers `layer_split(taken, holders)[r]` (ranks beyond the layer count hold nothing,
//! as for UMT5). A prompt's hidden state `[N, hidden]` (template prefix included: the prompt's
//! tokens attend to it) travels rank to rank, and the last holder cuts the template prefix exactly
//! as [`super::hv15::mllm_embeds`] does and broadcasts `[1, N − crop_start, hidden]`.
//!
//! Dtype ([`super::hv15::run_dtype`]): f32 on the CPU, as the host path; on a GPU the checkpoint's
//! (bf16 for the published weights), as the UMT5 split runs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::hv15::{crop_prompt_rows, layers_taken, prompt_ids, run_dtype, MllmTokenizer};
use super::sharded::LayerShard;
use super::TextError;
use crate::model_spec::TextModel;
use crate::models::qwen25vl_text::{self, checkpoint_root, Config, Qwen25VlLayers, Rope, TokenEmbedding};
use crate::parallel::comm::Collective;
use crate::weights::{self, RecordingBackend};

/// This rank's part of a layer-split Qwen2.5-VL MLLM prompt encoder.
pub struct ShardedMllmEncoder {
    tokenizer: MllmTokenizer,
    cfg: Config,
    shard: LayerShard,
    embed_tokens: Option<TokenEmbedding>,
    layers: Qwen25VlLayers,
    comm: Arc<dyn Collective>,
    device: Device,
    dtype: DType,
    weights_bytes: u64,
}

impl ShardedMllmEncoder {
    /// Loads this rank's layers (and the embedding on rank 0) from `model`'s `text_encoder/`,
    /// reading only those tensors. Every rank of `comm` must call it.
    pub fn load(model: &TextModel, device: &Device, comm: Arc<dyn Collective>) -> Result<Self, TextError> {
        let tokenizer = MllmTokenizer::from_path(&model.tokenizer)?;
        let dir = weights::component_dir(&model.encoder, "text_encoder")?;
        let dtype = run_dtype(model, device.is_cpu())?;
        let (cfg, vb) = qwen25vl_text::open(&dir, dtype, device)?;
        let shard = LayerShard::new(layers_taken(cfg.num_hidden_layers), comm.rank().0, comm.world_size());
        let build = |vb: &VarBuilder| -> candle_core::Result<(Option<TokenEmbedding>, Qwen25VlLayers)> {
            let embed_tokens = shard.is_first().then(|| TokenEmbedding::new(&cfg, vb.clone())).transpose()?;
            Ok((embed_tokens, Qwen25VlLayers::new(&cfg, vb, shard.layers.clone())?))
        };
        let (embed_tokens, layers) = build(&checkpoint_root(vb)).map_err(|e| qwen25vl_text::mismatch(&dir, e))?;
        // The same build on a recorder counts what this rank holds, reading nothing.
        let rec = RecordingBackend::new();
        build(&rec.var_builder(dtype, &Device::Cpu))?;
        let elems: usize = rec.requested().values().map(|s| s.iter().product::<usize>()).sum();
        let weights_bytes = (elems * dtype.size_in_bytes()) as u64;
        let gb = weights_bytes as f64 / 1e9;
        tracing::info!(rank = shard.rank, layers = ?shard.layers, gb, "loaded Qwen2.5-VL shard");
        Ok(Self { tokenizer, cfg, shard, embed_tokens, layers, comm, device: device.clone(), dtype, weights_bytes })
    }

    /// Bytes of encoder weights this rank holds.
    pub fn weights_bytes(&self) -> u64 {
        self.weights_bytes
    }

    /// The layers this rank holds (empty beyond the holders).
    pub fn layers(&self) -> std::ops::Range<usize> {
        self.shard.layers.clone()
    }

    /// `prompt_embeds` of one prompt, valid rows only, `[1, N, hidden]` f32 on the host on every
    /// rank (collective): [`super::hv15::mllm_embeds`] over the split model. Every rank tokenizes
    /// (cheap), so every rank knows the shapes that travel.
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<Tensor, TextError> {
        let ids = prompt_ids(&self.tokenizer, prompt, max_length)?;
        let (n, h, crop) = (ids.len(), self.cfg.hidden_size, self.tokenizer.crop_start());
        let embed = || -> Result<Tensor, TextError> {
            let embed = self.embed_tokens.as_ref().ok_or_else(|| candle_core::Error::msg("only rank 0 embeds"))?;
            Ok(embed.forward(&ids)?)
        };
        let layers = |xs: Tensor| -> Result<Tensor, TextError> {
            let rope = Rope::new(&self.cfg, n, &self.device)?;
            Ok(self.layers.forward(&xs.to_dtype(self.dtype)?, &rope)?)
        };
        let finish = |xs: Tensor| -> Result<Tensor, TextError> {
            Ok(crop_prompt_rows(&xs, crop)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
        };
        self.shard.pass(self.comm.as_ref(), &self.device, &[n, h], &[1, n - crop, h], embed, layers, finish)
    }
}

/// Every prompt's `prompt_embeds` on every rank, with the encoder loaded for them and dropped
/// after; also the bytes of weights this rank held. The prompt cache is the caller's (the session
/// consults it before and fills it after, with [`super::hv15::cache_key`] in [`run_dtype`]).
pub fn embed_mllm_prompts_sharded(
    model: &TextModel,
    prompts: &[&str],
    max_length: usize,
    device: &Device,
    comm: Arc<dyn Collective>,
) -> Result<(Vec<Tensor>, u64), TextError> {
    let encoder = ShardedMllmEncoder::load(model, device, comm)?;
    let embeds = prompts.iter().map(|p| encoder.encode(p, max_length)).collect::<Result<_, _>>()?;
    Ok((embeds, encoder.weights_bytes()))
}
