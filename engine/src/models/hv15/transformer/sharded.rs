//! The HunyuanVideo 1.5 DiT as one rank of a parallel plan runs it: embedders, token refiner and
//! output head replicated (1 % of the 8.3B model), the 54 dual-stream blocks either resident or
//! FSDP-sharded ([`BlockSource`]), and the video tokens optionally split over a Ulysses group
//! (see [`super::ulysses`]).
//!
//! With neither sharding it is [`HunyuanVideo15Transformer3DModel::forward`] itself (the model is
//! its own block source); FSDP gathers bit-identical weights, so only Ulysses' smaller GEMMs can
//! change the f32 rounding.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::block::TransformerBlock;
use super::config::Config;
use super::model::{BlockSource, Context, HunyuanVideo15Transformer3DModel};
use crate::models::wan::transformer::attention::ChunkedAttention;
use crate::models::wan::transformer::ShardOptions;
use crate::parallel::comm::Collective;
use crate::parallel::fsdp::{CheckpointIndex, ShardedStore};
use crate::weights::ComponentWeights;

/// Checkpoint prefix of the dual-stream blocks (`transformer_blocks.{i}.…`).
const BLOCKS: &str = "transformer_blocks";

/// FSDP: this rank keeps `1/F` of every block tensor; [`BlockSource::block`] all-gathers one block
/// in the FSDP group and builds it, freed when the caller drops it.
struct FsdpBlocks {
    cfg: Config,
    store: ShardedStore,
}

impl BlockSource for FsdpBlocks {
    fn num_blocks(&self) -> usize {
        self.cfg.num_layers
    }

    fn block(&self, i: usize) -> Result<Cow<'_, TransformerBlock>> {
        let _span = tracing::debug_span!("fsdp_gather", i).entered();
        // The next block of this forward is gathered while this one runs (with a prefetch lane).
        let next = (i + 1 < self.cfg.num_layers).then(|| format!("{BLOCKS}.{}", i + 1));
        let vb = self.store.materialize_ahead(&format!("{BLOCKS}.{i}"), next.as_deref())?;
        Ok(Cow::Owned(TransformerBlock::new(&self.cfg, vb.pp(BLOCKS).pp(i))?))
    }
}

/// One rank's HunyuanVideo 1.5 transformer.
pub struct Hv15ShardedTransformer {
    /// The whole model (no FSDP) or its stem only (blocks in `fsdp`).
    model: HunyuanVideo15Transformer3DModel,
    fsdp: Option<FsdpBlocks>,
    ulysses: Option<Arc<dyn Collective>>,
    attention: ChunkedAttention,
    resident_bytes: u64,
    block_bytes: u64,
}

impl Hv15ShardedTransformer {
    /// Loads a transformer of config `cfg` from `weights` as `opts` says: the stem from the mmap'd
    /// checkpoint, the blocks whole or (FSDP) this rank's slice of each tensor, read by byte range.
    pub fn load(
        cfg: &Config,
        weights: &ComponentWeights,
        dtype: DType,
        device: &Device,
        opts: ShardOptions,
    ) -> Result<Self> {
        let index = CheckpointIndex::from_weights(weights)?;
        let vb = weights.var_builder(dtype, device).map_err(candle_core::Error::wrap)?;
        let is_block = |n: &str| n.starts_with(BLOCKS) && n.as_bytes().get(BLOCKS.len()) == Some(&b'.');
        let bytes_of = |select: &dyn Fn(&str) -> bool| -> u64 {
            index.entries().filter(|(n, _)| select(n)).map(|(_, e)| (e.numel() * dtype.size_in_bytes()) as u64).sum()
        };
        let (stem_bytes, all_blocks) = (bytes_of(&|n| !is_block(n)), bytes_of(&is_block));
        let block_bytes = all_blocks / cfg.num_layers.max(1) as u64;
        let (model, fsdp, resident_bytes) = match opts.fsdp.filter(|c| c.world_size() > 1) {
            Some(comm) => {
                let store =
                    ShardedStore::load(&index, is_block, comm, dtype, device)?.with_prefetch(opts.fsdp_prefetch);
                let bytes = stem_bytes + store.resident_bytes();
                let model = HunyuanVideo15Transformer3DModel::new_stem(cfg, vb)?;
                (model, Some(FsdpBlocks { cfg: cfg.clone(), store }), bytes)
            }
            None => (HunyuanVideo15Transformer3DModel::new(cfg, vb)?, None, stem_bytes + all_blocks),
        };
        Ok(Self {
            model,
            fsdp,
            ulysses: opts.ulysses.filter(|c| c.world_size() > 1),
            attention: ChunkedAttention::default(),
            resident_bytes,
            block_bytes,
        })
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// Bytes of weights this rank keeps resident (stem + its blocks or block slices), run dtype.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    /// Bytes of one whole block in the run dtype (what FSDP gathers at a time).
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// Seconds the forward waited for FSDP gathers so far (0 without FSDP).
    pub fn gather_wait_seconds(&self) -> f64 {
        self.fsdp.as_ref().map_or(0.0, |f| f.store.wait_seconds())
    }

    /// As [`HunyuanVideo15Transformer3DModel::forward`]; every rank of the Ulysses group returns the
    /// whole prediction.
    pub fn forward(&self, x: &Tensor, t: &Tensor, t_r: Option<&Tensor>, contexts: &[Context<'_>]) -> Result<Tensor> {
        let blocks: &dyn BlockSource = match &self.fsdp {
            Some(f) => f,
            None => &self.model,
        };
        let group = self.ulysses.as_deref();
        self.model.forward_blocks(x, t, t_r, contexts, group, &self.attention, blocks)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::parallel::comm::ThreadComm;
    use crate::parallel::Rank;
    use crate::tensor_io;
    use crate::weights::{load_config, Checkpoint};

    const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hv15/dit");

    fn errors(a: &Tensor, b: &Tensor) -> (f32, f32) {
        let d = (a - b).unwrap();
        let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        (d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), norm(&d) / norm(b))
    }

    /// Ulysses 1/2/4 × FSDP 1/2/4 on the golden DiT (72 video tokens: no padding at 2 and 4; the
    /// sharded (8-file) checkpoint read by byte range) equal the resident model on the I2V call,
    /// whose context has all three streams.
    #[test]
    fn sharded_forward_equals_the_resident_model() {
        let dir = Path::new(CASE).join("transformer");
        let dev = Device::Cpu;
        let cfg: Config = load_config(&dir).unwrap();
        let weights = ComponentWeights::diffusers(Checkpoint::open(&dir).unwrap().files);
        let model = super::super::load(&dir, DType::F32, &dev).unwrap();
        let i = tensor_io::read_all(&Path::new(CASE).join("inputs.safetensors"), &dev).unwrap();
        let rows = |x: &str, m: &str| super::super::valid_rows(&i[x].get(0).unwrap(), &i[m].get(0).unwrap()).unwrap();
        let (text, glyph) = (rows("context", "context_mask").unwrap(), rows("byt5", "byt5_mask").unwrap());
        let image = i["image_embeds"].get(0).unwrap();
        let ctx = [Context { text: &text, glyph: Some(&glyph), image: Some(&image) }];
        let (x, t) = (&i["x_i2v"], &i["timestep"]);
        let want = model.forward(x, t, None, &ctx).unwrap();
        for (u, f) in [(2, 1), (1, 2), (4, 1), (2, 2), (1, 4), (4, 4)] {
            let n = u.max(f);
            let comms = ThreadComm::world(n, Duration::from_secs(20));
            let outs: Vec<Tensor> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|comm| {
                        let (cfg, weights, ctx) = (&cfg, &weights, &ctx);
                        s.spawn(move || {
                            let world: Arc<dyn Collective> = Arc::new(comm);
                            let r = world.rank().0;
                            let group = |size: usize| {
                                let base = r / size * size;
                                world.sub_group(&(base..base + size).map(Rank).collect::<Vec<_>>()).unwrap()
                            };
                            let opts =
                                ShardOptions { fsdp: Some(group(f)), ulysses: Some(group(u)), ..Default::default() };
                            let m = Hv15ShardedTransformer::load(cfg, weights, DType::F32, &Device::Cpu, opts).unwrap();
                            m.forward(x, t, None, ctx).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (r, out) in outs.iter().enumerate() {
                let (max, rel) = errors(out, &want);
                println!("hv15 ulysses {u} fsdp {f} rank {r}: max-abs {max:.2e} rel {rel:.2e}");
                // FSDP gathers the same bits; Ulysses only re-blocks the token-local GEMMs (f32 rounding).
                assert!(rel < 1e-6, "ulysses {u} fsdp {f} rank {r}: rel {rel}");
                if u == 1 {
                    assert_eq!(max, 0.0, "fsdp {f} rank {r}");
                }
            }
        }
    }
}
