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
//! - Prefetch ([`ShardedStore::with_prefetch`], [`ShardedStore::materialize_ahead`]): given a second
//!   communicator of the group ([`Collective::duplicate`]: a second NCCL communicator, or the socket
//!   mesh's second lane), every gather of the store runs on it and the next unit's gather starts on
//!   a background thread as soon as the current unit is handed out, so it overlaps the current
//!   unit's compute (whose own collectives use the first communicator). The gathered bytes are the
//!   same, so results are bit-identical; memory holds two gathered units instead of one.
//!
//! Dtypes: matrices are stored in the run dtype (what the unsharded loader converts them to);
//! vectors and small tables (≤ 65 536 elements, e.g. norm weights and modulation tables that models
//! read in f32) keep their on-disk dtype, so every tensor reaches the model bit-identical to an
//! unsharded load.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

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

/// The gathered tensors of one unit, by checkpoint name.
type Unit = HashMap<String, Tensor>;

/// A unit being gathered on the prefetch thread.
struct Pending {
    prefix: String,
    thread: JoinHandle<Result<Unit>>,
}

/// The prefetch lane and its one gather in flight. Dropping it waits for the gather (an op left
/// running on the lane would interleave with the next store's ops on it).
#[derive(Default)]
struct Prefetch {
    lane: Option<Arc<dyn Collective>>,
    pending: Mutex<Option<Pending>>,
    /// Nanoseconds callers of `materialize_ahead` spent blocked on gathers.
    wait_nanos: AtomicU64,
}

impl Prefetch {
    fn take(&self) -> Option<Pending> {
        // A poisoned lock means a panic elsewhere; the slot is still a plain Option.
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Some(p) = self.take() {
            let _ = p.thread.join();
        }
    }
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch").field("lane", &self.lane.is_some()).finish()
    }
}

/// The sharded tensors of one FSDP group, as one rank holds them.
#[derive(Debug, Clone)]
pub struct ShardedStore {
    comm: Arc<dyn Collective>,
    slices: BTreeMap<String, Slice>,
    dtype: DType,
    device: Device,
    prefetch: Arc<Prefetch>,
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
        Ok(Self { comm, slices, dtype, device: device.clone(), prefetch: Arc::default() })
    }

    /// Gathers on `lane` (a [`Collective::duplicate`] of the store's group; `None`: no prefetch)
    /// and lets [`Self::materialize_ahead`] start the next unit's gather in the background.
    pub fn with_prefetch(mut self, lane: Option<Arc<dyn Collective>>) -> Self {
        if let Some(lane) = &lane {
            debug_assert_eq!((lane.rank(), lane.world_size()), (self.comm.rank(), self.comm.world_size()));
        }
        self.prefetch = Arc::new(Prefetch { lane, pending: Mutex::new(None), wait_nanos: AtomicU64::new(0) });
        self
    }

    /// Whether gathers run on a prefetch lane.
    pub fn prefetching(&self) -> bool {
        self.prefetch.lane.is_some()
    }

    /// Seconds callers of [`Self::materialize_ahead`] were blocked on gathers (the whole gather
    /// without prefetch; only what the compute did not hide with it).
    pub fn wait_seconds(&self) -> f64 {
        self.prefetch.wait_nanos.load(Ordering::Relaxed) as f64 * 1e-9
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
        gather_slice(self.comm.as_ref(), s)
    }

    /// The slices under `prefix`, in name order (cheap clones: tensors share their storage).
    fn unit_slices(&self, prefix: &str) -> Result<Vec<(String, Slice)>> {
        let parts: Vec<(String, Slice)> = self.under(prefix).map(|(n, s)| (n.clone(), s.clone())).collect();
        if parts.is_empty() {
            candle_core::bail!("no sharded tensors under `{prefix}`");
        }
        Ok(parts)
    }

    /// All-gathers every tensor named `prefix.…` (in name order, the same on every member: a
    /// collective) and returns them as a `VarBuilder` over their full checkpoint names.
    pub fn materialize(&self, prefix: &str) -> Result<VarBuilder<'static>> {
        let map = gather_unit(self.comm.as_ref(), &self.unit_slices(prefix)?)?;
        Ok(VarBuilder::from_tensors(map, self.dtype, &self.device))
    }

    /// [`Self::materialize`] of `prefix`, then (with a prefetch lane) starts gathering `next` on a
    /// background thread, which the call for `next` picks up. Every member must make the same
    /// calls in the same order (the lane's ops are then in the same order everywhere: at most one
    /// gather is in flight, and a call waits for it before starting another). Without a lane it is
    /// `materialize`.
    pub fn materialize_ahead(&self, prefix: &str, next: Option<&str>) -> Result<VarBuilder<'static>> {
        let Some(lane) = self.prefetch.lane.clone() else {
            let t0 = Instant::now();
            let vb = self.materialize(prefix);
            self.prefetch.wait_nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            return vb;
        };
        let t0 = Instant::now();
        let ready = match self.prefetch.take() {
            Some(p) => {
                let got =
                    p.thread.join().map_err(|_| candle_core::Error::Msg("the FSDP prefetch thread panicked".into()));
                // A different unit (a forward cut short by an error) is waited for and dropped.
                if p.prefix == prefix {
                    Some(got??)
                } else {
                    None
                }
            }
            None => None,
        };
        let map = match ready {
            Some(map) => map,
            None => gather_unit(lane.as_ref(), &self.unit_slices(prefix)?)?,
        };
        self.prefetch.wait_nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Some(next) = next {
            let parts = self.unit_slices(next)?;
            // The next unit's memory is taken here, on the caller's thread, before its gather is
            // issued: a rank then holds two gathered units from this moment on, whatever the
            // threads' timing, as the planner's prefetch term says (a gather left to allocate on
            // its own thread held them only when it happened to finish before this unit's compute).
            let reserved = reserve_unit(&parts, self.comm.world_size(), &self.device)?;
            // CUDA: the zero fill ran on this thread's stream; the gather writes on the prefetch's.
            self.device.synchronize()?;
            let device = self.device.clone();
            let thread = std::thread::Builder::new()
                .name("fsdp-prefetch".into())
                .spawn(move || {
                    let _span = tracing::debug_span!("fsdp_prefetch").entered();
                    let unit = gather_unit_into(lane.as_ref(), &parts, reserved)?;
                    // CUDA: the gathers ran on this thread's stream; finish them before another
                    // thread's stream reads the tensors.
                    device.synchronize()?;
                    Ok(unit)
                })
                .map_err(|e| candle_core::Error::Msg(format!("cannot start the FSDP prefetch thread: {e}")))?;
            *self.prefetch.pending.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Pending { prefix: next.to_string(), thread });
        }
        Ok(VarBuilder::from_tensors(map, self.dtype, &self.device))
    }
}

/// All-gathers one slice over `comm` into the full tensor.
fn gather_slice(comm: &dyn Collective, s: &Slice) -> Result<Tensor> {
    unflatten(comm.all_gather(&s.local, 0)?, s)
}

/// A slice's gathered flat tensor as the checkpoint's tensor: rank order is element order, so the
/// concatenation is the flattened tensor plus the padding.
fn unflatten(flat: Tensor, s: &Slice) -> Result<Tensor> {
    let n: usize = s.shape.iter().product();
    flat.narrow(0, 0, n)?.reshape(s.shape.as_slice())
}

/// All-gathers every slice of a unit, in the given (name) order.
fn gather_unit(comm: &dyn Collective, parts: &[(String, Slice)]) -> Result<Unit> {
    parts.iter().map(|(name, s)| Ok((name.clone(), gather_slice(comm, s)?))).collect()
}

/// The flat (padded) destination of every slice of a unit: `F` slices' worth each.
fn reserve_unit(parts: &[(String, Slice)], f: usize, device: &Device) -> Result<Vec<Tensor>> {
    parts.iter().map(|(_, s)| Tensor::zeros(s.local.elem_count() * f, s.local.dtype(), device)).collect()
}

/// [`gather_unit`] into the destinations [`reserve_unit`] made, in the same order.
fn gather_unit_into(comm: &dyn Collective, parts: &[(String, Slice)], reserved: Vec<Tensor>) -> Result<Unit> {
    parts
        .iter()
        .zip(reserved)
        .map(|((name, s), out)| {
            comm.all_gather_into(&s.local, &out)?;
            Ok((name.clone(), unflatten(out, s)?))
        })
        .collect()
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
