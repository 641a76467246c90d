//! FSDP-style weight sharding for inference: each rank of a group keeps a contiguous `1/F` slice of
//! every sharded tensor (the tensor flattened, split in `F` equal parts, the last zero-padded) and
//! the group gathers a unit's full weights just before use; the caller drops them after.
//!
//! - [`CheckpointIndex`]: the tensor table of a checkpoint (headers only, `weights::TensorTable`:
//!   any key dialect, fp8 scaled) and ranged reads of one tensor's elements, so a rank reads only
//!   its slice from disk (`pread` of those bytes; nothing else of the file is touched), with its
//!   LoRA deltas merged into just that slice.
//! - [`ShardedStore`]: the slices of every tensor whose name matches, keyed by checkpoint name;
//!   [`ShardedStore::materialize`] all-gathers every tensor under a prefix (e.g. `blocks.7`) and
//!   returns a `VarBuilder` over the full checkpoint names, so model code builds the unit exactly as
//!   from the checkpoint. Nothing here knows about a particular model: the Wan DiT blocks and the
//!   UMT5 layers use it the same way.
//!
//! Dtypes: matrices are stored in the run dtype (what the unsharded loader converts them to);
//! vectors and small tables (≤ 65 536 elements, e.g. norm weights and modulation tables that models
//! read in f32) keep their on-disk dtype, so every tensor reaches the model bit-identical to an
//! unsharded load.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::comm::Collective;
use crate::weights::{ComponentWeights, Deltas, StoredTensor, TensorTable};

/// Tensors up to this many elements keep their on-disk dtype (see the module docs).
const SMALL_TENSOR: usize = 1 << 16;

/// The tensor table of one checkpoint (one or several safetensors files, any key dialect and
/// storage dtype the [`TensorTable`] reads) and the deltas merged into it; ranged reads of one
/// tensor's elements, so a rank reads only its slice from disk.
#[derive(Debug, Clone)]
pub struct CheckpointIndex {
    table: TensorTable,
    deltas: Arc<Deltas>,
}

impl CheckpointIndex {
    /// Reads the headers of diffusers-named `files` (e.g. `weights::Checkpoint::open(dir)?.files`).
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        Self::from_weights(&ComponentWeights::diffusers(files.to_vec()))
    }

    /// The table of `weights` (renamed keys, fp8 scales) with its deltas.
    pub fn from_weights(weights: &ComponentWeights) -> Result<Self> {
        Ok(Self { table: weights.table().map_err(candle_core::Error::wrap)?, deltas: weights.deltas.clone() })
    }

    pub fn files(&self) -> &[PathBuf] {
        self.table.files()
    }

    pub fn entry(&self, name: &str) -> Option<&StoredTensor> {
        self.table.get(name)
    }

    /// Every tensor, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &StoredTensor)> {
        self.table.iter()
    }

    /// Elements `range` of tensor `name` flattened, as a 1-D CPU tensor (its table dtype, f32 when
    /// deltas were merged into it). Only those bytes are read from the file, and only those
    /// elements of the deltas are computed.
    pub fn read_range(&self, name: &str, range: std::ops::Range<usize>) -> Result<Tensor> {
        let slice = self.table.read_range(name, range.clone())?;
        self.deltas.apply_range(name, range, slice)
    }
}

/// This rank's slice of one tensor.
#[derive(Debug, Clone)]
struct Slice {
    shape: Vec<usize>,
    /// `(shard_len,)`; elements past the tensor's end are zeros.
    local: Tensor,
}

/// `ceil(numel / f)`: every rank's slice length (all-gather needs equal shapes).
fn shard_len(numel: usize, f: usize) -> usize {
    numel.div_ceil(f).max(1)
}

/// The sharded tensors of one FSDP group, as one rank holds them.
#[derive(Debug, Clone)]
pub struct ShardedStore {
    comm: Arc<dyn Collective>,
    slices: BTreeMap<String, Slice>,
    dtype: DType,
    device: Device,
}

impl ShardedStore {
    /// Reads this rank's slice of every tensor of `index` for which `select(name)` holds. `comm` is
    /// the FSDP group (rank `r` of `F` keeps elements `[r·s, (r+1)·s)` with `s = ⌈numel/F⌉`).
    /// `dtype`: the run dtype (see the module docs for which tensors keep theirs).
    pub fn load(
        index: &CheckpointIndex,
        select: impl Fn(&str) -> bool,
        comm: Arc<dyn Collective>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (f, r) = (comm.world_size(), comm.rank().0);
        let mut slices = BTreeMap::new();
        for (name, e) in index.entries().filter(|(n, _)| select(n)) {
            let n = e.numel();
            let s = shard_len(n, f);
            let (a, b) = ((r * s).min(n), ((r + 1) * s).min(n));
            // A tensor with deltas reads as f32 (the merge is in f32), as the unsharded loader gives it.
            let read = if index.deltas.contains(name) { DType::F32 } else { e.dtype };
            let store = if e.shape.len() <= 1 || n <= SMALL_TENSOR || !read.is_float() { read } else { dtype };
            let mut local = index.read_range(name, a..b)?.to_dtype(store)?;
            if b - a < s {
                let pad = Tensor::zeros(s - (b - a), store, &Device::Cpu)?;
                local = if b > a { Tensor::cat(&[&local, &pad], 0)? } else { pad };
            }
            slices.insert(name.clone(), Slice { shape: e.shape.clone(), local: local.to_device(device)? });
        }
        Ok(Self { comm, slices, dtype, device: device.clone() })
    }

    /// Bytes this rank keeps resident.
    pub fn resident_bytes(&self) -> u64 {
        self.slices.values().map(|s| (s.local.elem_count() * s.local.dtype().size_in_bytes()) as u64).sum()
    }

    /// Bytes of the full tensors under `prefix` (what [`Self::materialize`] builds transiently).
    pub fn unit_bytes(&self, prefix: &str) -> u64 {
        self.under(prefix)
            .map(|(_, s)| (s.shape.iter().product::<usize>() * s.local.dtype().size_in_bytes()) as u64)
            .sum()
    }

    /// Number of sharded tensors.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Slice)> + 'a {
        self.slices.range(prefix.to_string()..).take_while(move |(n, _)| n.starts_with(prefix)).filter(move |(n, _)| {
            prefix.is_empty() || n.len() == prefix.len() || n.as_bytes().get(prefix.len()) == Some(&b'.')
        })
    }

    /// All-gathers tensor `name` over the group (collective: every member calls it).
    pub fn gather(&self, name: &str) -> Result<Tensor> {
        let Some(s) = self.slices.get(name) else { candle_core::bail!("tensor {name} is not in this sharded store") };
        let n: usize = s.shape.iter().product();
        // Rank order = element order: the concatenation is the flattened tensor plus the padding.
        self.comm.all_gather(&s.local, 0)?.narrow(0, 0, n)?.reshape(s.shape.as_slice())
    }

    /// All-gathers every tensor named `prefix.…` (in name order, the same on every member: a
    /// collective) and returns them as a `VarBuilder` over their full checkpoint names.
    pub fn materialize(&self, prefix: &str) -> Result<VarBuilder<'static>> {
        let names: Vec<String> = self.under(prefix).map(|(n, _)| n.clone()).collect();
        if names.is_empty() {
            candle_core::bail!("no sharded tensors under `{prefix}`");
        }
        let mut map = HashMap::with_capacity(names.len());
        for name in names {
            let t = self.gather(&name)?;
            map.insert(name, t);
        }
        Ok(VarBuilder::from_tensors(map, self.dtype, &self.device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::comm::ThreadComm;
    use std::path::Path;
    use std::time::Duration;

    /// A checkpoint with tensors of awkward sizes (not divisible by the group, smaller than it).
    fn write_checkpoint(dir: &Path) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        tensors.insert("blocks.0.w".to_string(), Tensor::arange(0f32, 300., &dev).unwrap().reshape((20, 15)).unwrap());
        tensors.insert("blocks.0.b".to_string(), Tensor::new(&[1f32, 2., 3.], &dev).unwrap());
        tensors.insert("blocks.1.w".to_string(), Tensor::new(&[[7f32]], &dev).unwrap());
        tensors.insert("blocks.10.w".to_string(), Tensor::new(&[5f32, 6.], &dev).unwrap());
        tensors.insert("head.w".to_string(), Tensor::ones((4, 4), DType::F32, &dev).unwrap());
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        tensors
    }

    #[test]
    fn ranged_reads_return_the_flattened_elements() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let tensors = write_checkpoint(tmp.path());
        let index = CheckpointIndex::open(&[tmp.path().join("model.safetensors")])?;
        let got = index.read_range("blocks.0.w", 17..43)?.to_vec1::<f32>()?;
        assert_eq!(got, (17..43).map(|v| v as f32).collect::<Vec<_>>());
        assert_eq!(index.entry("head.w").map(|e| e.shape.clone()), Some(vec![4, 4]));
        assert!(index.read_range("blocks.0.b", 2..4).is_err());
        assert!(index.read_range("nope", 0..1).is_err());
        assert_eq!(index.entries().count(), tensors.len());
        Ok(())
    }

    /// Groups of 1–4 ranks: every materialised tensor equals the checkpoint's, each rank keeps
    /// ⌈numel/F⌉ elements per tensor, and a prefix does not capture its siblings (`blocks.1` vs
    /// `blocks.10`).
    #[test]
    fn materialize_reassembles_every_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let tensors = write_checkpoint(tmp.path());
        let files = vec![tmp.path().join("model.safetensors")];
        for f in 1..=4 {
            let comms = ThreadComm::world(f, Duration::from_secs(10));
            std::thread::scope(|s| {
                for comm in comms {
                    let (files, tensors) = (&files, &tensors);
                    s.spawn(move || {
                        let index = CheckpointIndex::open(files).unwrap();
                        let store = ShardedStore::load(
                            &index,
                            |n| n.starts_with("blocks."),
                            Arc::new(comm),
                            DType::F32,
                            &Device::Cpu,
                        )
                        .unwrap();
                        assert_eq!(store.len(), 4);
                        let expect: usize = [300usize, 3, 1, 2].iter().map(|n| n.div_ceil(f) * 4).sum();
                        assert_eq!(store.resident_bytes(), expect as u64);
                        assert_eq!(store.unit_bytes("blocks.0"), (303 * 4) as u64);
                        for (prefix, names) in
                            [("blocks.0", vec!["blocks.0.b", "blocks.0.w"]), ("blocks.1", vec!["blocks.1.w"])]
                        {
                            let vb = store.materialize(prefix).unwrap();
                            for name in names {
                                let want = &tensors[name];
                                let got = vb.get(want.shape(), name).unwrap();
                                let diff = (got - want).unwrap().abs().unwrap().sum_all().unwrap();
                                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} with F = {f}");
                            }
                            assert!(!vb.contains_tensor("blocks.10.w"), "{prefix} must not include blocks.10");
                        }
                        assert!(store.materialize("head").is_err(), "unselected tensors are not sharded");
                    });
                }
            });
        }
    }
}
