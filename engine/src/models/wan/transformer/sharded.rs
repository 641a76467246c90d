//! The Wan DiT as one rank of a parallel plan runs it: the stem and head replicated, the blocks
//! either resident or FSDP-sharded ([`BlockSource`]), and the sequence optionally split over a
//! Ulysses group (see [`super::ulysses`]).
//!
//! With neither sharding it is the same computation as [`WanTransformer3DModel::forward`] (same
//! ops in the same order), which the tests check bit for bit.
//!
//! Weights: the stem and output head (patch/text/time embeddings, `scale_shift_table`, `proj_out`)
//! are replicated on every rank: they are small next to the blocks (0.7 % of A14B) and every rank
//! needs them every step. Only the blocks are sharded.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::attention::{Attention, ChunkedAttention};
use super::block::WanTransformerBlock;
use super::config::Config;
use super::model::{WanStem, WanTransformer3DModel};
use super::ulysses::{SeqShard, UlyssesAttention};
use crate::parallel::comm::Collective;
use crate::parallel::fsdp::{CheckpointIndex, ShardedStore};
use crate::weights::{load_config, Checkpoint, ComponentWeights};

/// Where a rank's transformer blocks come from.
pub trait BlockSource: Send + Sync {
    fn num_blocks(&self) -> usize;
    /// Block `i`, ready to run. Sharded sources gather its weights here (a collective: every member
    /// of the group must ask for the same blocks in the same order); the caller drops it after use.
    fn block(&self, i: usize) -> Result<Cow<'_, WanTransformerBlock>>;
    /// Bytes of block weights this rank keeps between uses.
    fn resident_bytes(&self) -> u64;
    /// Bytes of one whole block (the most a sharded source materialises at a time).
    fn block_bytes(&self) -> u64;
    /// Seconds [`Self::block`] was blocked on FSDP gathers so far (0 for resident blocks).
    fn gather_wait_seconds(&self) -> f64 {
        0.0
    }
}

/// Every block loaded and kept (no sharding).
pub struct ResidentBlocks {
    blocks: Vec<WanTransformerBlock>,
    bytes: u64,
}

impl BlockSource for ResidentBlocks {
    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn block(&self, i: usize) -> Result<Cow<'_, WanTransformerBlock>> {
        match self.blocks.get(i) {
            Some(b) => Ok(Cow::Borrowed(b)),
            None => candle_core::bail!("block {i} of {}", self.blocks.len()),
        }
    }

    fn resident_bytes(&self) -> u64 {
        self.bytes
    }

    fn block_bytes(&self) -> u64 {
        self.bytes / self.blocks.len().max(1) as u64
    }
}

impl BlockSource for WanTransformer3DModel {
    fn num_blocks(&self) -> usize {
        self.blocks().len()
    }

    fn block(&self, i: usize) -> Result<Cow<'_, WanTransformerBlock>> {
        match self.blocks().get(i) {
            Some(b) => Ok(Cow::Borrowed(b)),
            None => candle_core::bail!("block {i} of {}", self.blocks().len()),
        }
    }

    fn resident_bytes(&self) -> u64 {
        0
    }

    fn block_bytes(&self) -> u64 {
        0
    }
}

/// FSDP: this rank keeps `1/F` of every block's tensors; [`BlockSource::block`] all-gathers one
/// block in the FSDP group and builds it, and it is freed when the caller drops it.
pub struct FsdpBlocks {
    cfg: Config,
    store: ShardedStore,
}

impl BlockSource for FsdpBlocks {
    fn num_blocks(&self) -> usize {
        self.cfg.num_layers
    }

    fn block(&self, i: usize) -> Result<Cow<'_, WanTransformerBlock>> {
        let _span = tracing::debug_span!("fsdp_gather", i).entered();
        // The next block of this forward is gathered while this one runs (with a prefetch lane).
        let next = (i + 1 < self.cfg.num_layers).then(|| format!("blocks.{}", i + 1));
        let vb = self.store.materialize_ahead(&format!("blocks.{i}"), next.as_deref())?;
        Ok(Cow::Owned(WanTransformerBlock::new(&self.cfg, vb.pp("blocks").pp(i))?))
    }

    fn resident_bytes(&self) -> u64 {
        self.store.resident_bytes()
    }

    fn block_bytes(&self) -> u64 {
        self.store.unit_bytes("blocks.0")
    }

    fn gather_wait_seconds(&self) -> f64 {
        self.store.wait_seconds()
    }
}

/// How a rank holds and runs one transformer.
#[derive(Clone, Default)]
pub struct ShardOptions {
    /// FSDP group (`None` or a group of one: every block resident).
    pub fsdp: Option<Arc<dyn Collective>>,
    /// Ulysses group (`None` or a group of one: the whole sequence on this rank).
    pub ulysses: Option<Arc<dyn Collective>>,
    /// A [`Collective::duplicate`] of `fsdp`: the next block is gathered on it while the current
    /// one runs (`None`: every gather on `fsdp`, before its block).
    pub fsdp_prefetch: Option<Arc<dyn Collective>>,
}

/// One rank's transformer: replicated stem/head, blocks from a [`BlockSource`], optional Ulysses.
pub struct ShardedTransformer {
    cfg: Config,
    stem: WanStem,
    blocks: Box<dyn BlockSource>,
    ulysses: Option<Arc<dyn Collective>>,
    attention: ChunkedAttention,
    stem_bytes: u64,
}

impl ShardedTransformer {
    /// Loads a diffusers `transformer/` folder as `opts` says (see [`Self::load`]).
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device, opts: ShardOptions) -> Result<Self> {
        let cfg: Config = load_config(dir).map_err(candle_core::Error::wrap)?;
        let ckpt = Checkpoint::open(dir).map_err(candle_core::Error::wrap)?;
        Self::load(&cfg, &ComponentWeights::diffusers(ckpt.files), dtype, device, opts)
    }

    /// Loads a transformer of config `cfg` from `weights` (any key dialect and storage dtype, LoRA
    /// deltas merged) as `opts` says: the stem from the mmap'd checkpoint, the blocks whole or
    /// (FSDP) only this rank's slice of each tensor, read by byte range and merged by slice.
    pub fn load(
        cfg: &Config,
        weights: &ComponentWeights,
        dtype: DType,
        device: &Device,
        opts: ShardOptions,
    ) -> Result<Self> {
        let cfg = cfg.clone();
        let index = CheckpointIndex::from_weights(weights)?;
        let vb = weights.var_builder(dtype, device).map_err(candle_core::Error::wrap)?;
        let stem = WanStem::new(&cfg, vb.clone())?;
        let is_block = |n: &str| n.starts_with("blocks.");
        let run_bytes = |select: &dyn Fn(&str) -> bool| -> u64 {
            index.entries().filter(|(n, _)| select(n)).map(|(_, e)| (e.numel() * dtype.size_in_bytes()) as u64).sum()
        };
        let stem_bytes = run_bytes(&|n| !is_block(n));
        let blocks: Box<dyn BlockSource> = match opts.fsdp.filter(|c| c.world_size() > 1) {
            Some(comm) => {
                let store =
                    ShardedStore::load(&index, is_block, comm, dtype, device)?.with_prefetch(opts.fsdp_prefetch);
                Box::new(FsdpBlocks { cfg: cfg.clone(), store })
            }
            None => {
                let vb_blocks = vb.pp("blocks");
                let blocks = (0..cfg.num_layers)
                    .map(|i| WanTransformerBlock::new(&cfg, vb_blocks.pp(i)))
                    .collect::<Result<Vec<_>>>()?;
                Box::new(ResidentBlocks { blocks, bytes: run_bytes(&is_block) })
            }
        };
        Ok(Self {
            cfg,
            stem,
            blocks,
            ulysses: opts.ulysses.filter(|c| c.world_size() > 1),
            attention: ChunkedAttention::default(),
            stem_bytes,
        })
    }

    /// A resident model run through this path (tests: sharded == unsharded on the same weights).
    pub fn from_model(model: WanTransformer3DModel, ulysses: Option<Arc<dyn Collective>>) -> Self {
        let cfg = model.config().clone();
        let stem = model.stem().clone();
        Self {
            cfg,
            stem,
            blocks: Box::new(model),
            ulysses: ulysses.filter(|c| c.world_size() > 1),
            attention: ChunkedAttention::default(),
            stem_bytes: 0,
        }
    }

    pub fn with_attention(mut self, attention: ChunkedAttention) -> Self {
        self.attention = attention;
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Bytes of weights this rank keeps resident (stem + its blocks or block slices), in the run dtype.
    pub fn resident_bytes(&self) -> u64 {
        self.stem_bytes + self.blocks.resident_bytes()
    }

    /// Bytes of one whole block in the run dtype (what FSDP gathers at a time).
    pub fn block_bytes(&self) -> u64 {
        self.blocks.block_bytes()
    }

    /// Seconds the forward waited for FSDP gathers so far (see [`ShardedStore::wait_seconds`]).
    pub fn gather_wait_seconds(&self) -> f64 {
        self.blocks.gather_wait_seconds()
    }

    /// As [`WanTransformer3DModel::forward`]; every rank of the Ulysses group returns the whole
    /// prediction.
    pub fn forward(&self, hidden_states: &Tensor, timestep: &Tensor, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let p = self.stem.prepare(hidden_states, timestep, encoder_hidden_states, None)?;
        let len = p.tokens.dim(1)?;
        let local = Attention { self_attn: &self.attention, cross_attn: &self.attention };
        let Some(comm) = &self.ulysses else {
            let mut xs = p.tokens;
            for i in 0..self.blocks.num_blocks() {
                let _span = tracing::debug_span!("wan_block", i).entered();
                xs = self.blocks.block(i)?.forward(&xs, &p.context, &p.time, &p.rope, local)?;
            }
            return self.stem.head(&xs, &p.time, p.grid);
        };
        let shard = SeqShard::new(len, comm.world_size(), comm.rank().0)?;
        let (time, rope) = (shard.time(&p.time)?, shard.rope(&p.rope)?);
        let mut xs = shard.take(&p.tokens, 1)?;
        drop(p.tokens);
        let ulysses = UlyssesAttention { comm: comm.as_ref(), inner: &self.attention, len };
        let attention = Attention { self_attn: &ulysses, cross_attn: &self.attention };
        for i in 0..self.blocks.num_blocks() {
            let _span = tracing::debug_span!("wan_block", i).entered();
            xs = self.blocks.block(i)?.forward(&xs, &p.context, &time, &rope, attention)?;
        }
        // The head is per token: run it on the shard, gather its (narrow) output, cut the padding.
        let out = self.stem.head_tokens(&xs, &time)?.contiguous()?;
        let full = comm.all_gather(&out, 1)?;
        self.stem.unpatchify(&full.narrow(1, 0, len)?, p.grid)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::parallel::comm::ThreadComm;

    fn tiny() -> Config {
        Config {
            num_attention_heads: 4,
            attention_head_dim: 6,
            in_channels: 4,
            out_channels: Some(4),
            text_dim: 8,
            freq_dim: 16,
            ffn_dim: 32,
            num_layers: 2,
            ..Config::default()
        }
    }

    fn random_model(cfg: &Config) -> Result<(WanTransformer3DModel, VarMap)> {
        let varmap = VarMap::new();
        let model = WanTransformer3DModel::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu)?)?;
        }
        Ok((model, varmap))
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// ‖a − b‖ / ‖b‖.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        norm(&(a - b).unwrap()) / norm(b)
    }

    /// Ulysses 1, 2 and 4 × FSDP 1, 2 and 4 on a saved random checkpoint, with per-token
    /// timesteps and 3·3·3 = 27 tokens (padding for every degree > 1) equal the resident model.
    #[test]
    fn sharded_forward_equals_the_resident_model() -> Result<()> {
        let cfg = tiny();
        let (model, varmap) = random_model(&cfg)?;
        let tmp = tempfile::tempdir().unwrap();
        varmap.save(tmp.path().join("model.safetensors"))?;
        std::fs::write(tmp.path().join("config.json"), cfg.to_diffusers_json().to_string())?;
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1., (1, 4, 3, 6, 6), &dev)?;
        let text = Tensor::randn(0f32, 1., (1, 5, 8), &dev)?;
        let per_token: Vec<f32> = [0f32, 700., 700.].iter().flat_map(|&t| std::iter::repeat_n(t, 9)).collect();
        let t = Tensor::from_vec(per_token, (1, 27), &dev)?;
        let want = model.forward(&xs, &t, &text)?;
        // Through this path with no sharding: the same ops, bit for bit.
        let same = ShardedTransformer::from_model(model, None).forward(&xs, &t, &text)?;
        assert_eq!(max_abs(&same, &want), 0.0);
        let mut unprefetched = std::collections::HashMap::new();
        let configs = [(2, 1, false), (1, 2, false), (4, 1, false), (2, 2, false), (1, 4, false), (4, 4, false)];
        // With prefetch: the next block's gather on the second lane while Ulysses' all-to-alls run.
        let prefetched = [(2, 4, false), (1, 2, true), (1, 4, true), (2, 2, true), (4, 4, true), (2, 4, true)];
        for (u, f, prefetch) in configs.into_iter().chain(prefetched) {
            let n = u.max(f);
            let comms = ThreadComm::world(n, Duration::from_secs(20));
            let outs: Vec<(Tensor, u64)> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|comm| {
                        let (dir, xs, t, text) = (tmp.path(), &xs, &t, &text);
                        s.spawn(move || {
                            let world: Arc<dyn Collective> = Arc::new(comm);
                            let r = world.rank().0;
                            let group = |size: usize| {
                                let base = r / size * size;
                                let ranks: Vec<_> = (base..base + size).map(crate::parallel::Rank).collect();
                                world.sub_group(&ranks).unwrap()
                            };
                            let fsdp = group(f);
                            let fsdp_prefetch = if prefetch { fsdp.duplicate().unwrap() } else { None };
                            assert_eq!(fsdp_prefetch.is_some(), prefetch, "thread meshes have a second lane");
                            let opts = ShardOptions { fsdp: Some(fsdp), ulysses: Some(group(u)), fsdp_prefetch };
                            let model = ShardedTransformer::load_dir(dir, DType::F32, &Device::Cpu, opts).unwrap();
                            // Twice: the second forward starts while nothing is in flight again.
                            let first = model.forward(xs, t, text).unwrap();
                            let again = model.forward(xs, t, text).unwrap();
                            assert_eq!(max_abs(&first, &again), 0.0);
                            (first, model.resident_bytes())
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (r, (out, bytes)) in outs.iter().enumerate() {
                let (err, rel) = (max_abs(out, &want), rel(out, &want));
                println!(
                    "ulysses {u} fsdp {f} prefetch {prefetch} rank {r}: max-abs {err:.2e} rel {rel:.2e}, resident {bytes} B"
                );
                // Gathered weights are bit-identical (FSDP alone: exactly equal). Ulysses runs the
                // token-local GEMMs on fewer rows, which changes their f32 blocking: rounding only.
                assert!(rel < 1e-6, "ulysses {u} fsdp {f} rank {r}: rel {rel}");
                if u == 1 {
                    assert_eq!(err, 0.0, "fsdp {f} rank {r}");
                }
            }
            // Prefetching gathers the same bytes: bit-identical to the same plan without it.
            match (prefetch, unprefetched.get(&(u, f))) {
                (true, Some(base)) => {
                    for (r, ((out, _), base)) in outs.iter().zip(base).enumerate() {
                        assert_eq!(max_abs(out, base), 0.0, "ulysses {u} fsdp {f} rank {r}: prefetch changed bits");
                    }
                }
                (true, None) => panic!("no run without prefetch for ulysses {u} fsdp {f}"),
                (false, _) => {
                    unprefetched.insert((u, f), outs.into_iter().map(|(o, _)| o).collect::<Vec<_>>());
                }
            }
        }
        Ok(())
    }
}
