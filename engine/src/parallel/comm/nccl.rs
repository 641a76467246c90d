//! NCCL backend (feature `cuda`): one process per GPU, NCCL 2.28 through cudarc.
//!
//! - `all_reduce`, `all_gather`, `broadcast`, `barrier`: native NCCL collectives, wrapped as candle
//!   `CustomOp1`s (as in candle's `llama_multiprocess` example), written once generically over dtypes.
//! - `all_to_all`: native grouped `ncclSend`/`ncclRecv` (one group, so no ordering deadlock).
//! - `send`/`recv` and `sub_group`: through the host-memory socket mesh every world also forms.
//!   Point-to-point NCCL on one stream deadlocks when two ranks send to each other first, which the
//!   trait allows; and a real NCCL sub-communicator (`ncclCommSplit`) is a collective call of the
//!   whole world, while the trait lets members create groups alone. Both are fine for the small
//!   halo exchanges and CFG groups they serve; switch to `ncclCommSplit` if a group becomes hot.
//!
//! The unique id is made by rank 0 and relayed by the supervisor (`Hello` → `Init`). Device probing
//! (`tessera-worker --doctor`) is not here but in `runtime::doctor`.

// cudarc's NCCL `Comm` is not `Send` (it holds raw handles); moving it into a `Mutex` that the
// `Collective` trait (`Send + Sync`) can hold needs one `unsafe impl Send`, argued below.
#![allow(unsafe_code)]

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::CudaDType;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp as NcclReduceOp};

use super::mesh::MeshComm;
use super::{Collective, CommError, ReduceOp};
use crate::parallel::Rank;

/// Bytes of an NCCL unique id.
pub const NCCL_ID_BYTES: usize = 128;

struct SendComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent (NCCL's thread-safety rule); `SendComm` is private to this module, which only ever
// reaches the `Comm` through the `Mutex` in `NcclComm` (`NcclComm::lock`). Its stream is an
// `Arc<CudaStream>`, itself `Send + Sync`.
unsafe impl Send for SendComm {}

pub struct NcclComm {
    comm: Mutex<SendComm>,
    device: CudaDevice,
    rank: usize,
    world_size: usize,
    /// Host-memory mesh for point-to-point and sub-groups (see the module docs).
    host: MeshComm,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclComm(rank {} of {}, {:?})", self.rank, self.world_size, self.device)
    }
}

pub fn id_to_bytes(id: &Id) -> Vec<u8> {
    id.internal().iter().map(|&c| c as u8).collect()
}

pub fn id_from_bytes(bytes: &[u8]) -> std::result::Result<Id, CommError> {
    if bytes.len() != NCCL_ID_BYTES {
        return Err(CommError::Setup(format!("NCCL id of {} bytes, expected {NCCL_ID_BYTES}", bytes.len())));
    }
    let mut internal = [0 as std::ffi::c_char; NCCL_ID_BYTES];
    for (dst, src) in internal.iter_mut().zip(bytes) {
        *dst = *src as std::ffi::c_char;
    }
    Ok(Id::uninit(internal))
}

/// Evaluates `$body` with the type `$T` naming the Rust element type of `$dtype` (a candle
/// [`DType`]), or fails for dtypes NCCL has no type for: the one list of supported dtypes.
macro_rules! with_nccl_type {
    ($dtype:expr, $what:literal, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            other => candle_core::bail!("NCCL {} does not support {other:?}", $what),
        }
    };
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL {what} failed: {e:?}"))
}

impl NcclComm {
    /// `ncclCommInitRank` on `device`'s stream. Blocks until every rank has called it.
    pub fn new(
        device: &Device,
        rank: usize,
        world_size: usize,
        id: Id,
        host: MeshComm,
    ) -> std::result::Result<Self, CommError> {
        let Device::Cuda(cuda) = device else {
            return Err(CommError::Setup("the NCCL backend needs a CUDA device".into()));
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world_size, id)
            .map_err(|e| CommError::Setup(format!("ncclCommInitRank (rank {rank} of {world_size}): {e:?}")))?;
        Ok(Self {
            comm: Mutex::new(SendComm(comm)),
            device: cuda.clone(),
            rank,
            world_size,
            host: host.with_device(device.clone()),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, SendComm>> {
        self.comm.lock().map_err(|_| candle_core::Error::Msg("NCCL communicator lock poisoned".into()))
    }

    fn on_device(&self, xs: &Tensor) -> Result<Tensor> {
        match xs.device() {
            Device::Cuda(d) if d.same_device(&self.device) => xs.contiguous(),
            _ => xs.to_device(&Device::Cuda(self.device.clone()))?.contiguous(),
        }
    }
}

/// One NCCL collective as a candle op: reads the input's storage, returns freshly allocated output.
enum NcclOp<'a> {
    AllReduce(&'a NcclComm, ReduceOp),
    AllGather(&'a NcclComm),
    Broadcast(&'a NcclComm, usize),
    /// Receives into a buffer shaped like the input (grouped all-to-all only).
    Recv(&'a NcclComm, usize),
}

impl NcclOp<'_> {
    fn comm(&self) -> &NcclComm {
        match self {
            Self::AllReduce(c, _) | Self::AllGather(c) | Self::Broadcast(c, _) | Self::Recv(c, _) => c,
        }
    }

    fn run<T: NcclType + CudaDType + DeviceRepr + ValidAsZeroBits>(
        &self,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("NCCL op on a non-contiguous tensor".into()))?;
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let n = end - start;
        let dev = s.device.clone();
        let guard = self.comm().lock()?;
        let comm = &guard.0;
        let (dst, shape) = match self {
            Self::AllReduce(_, op) => {
                let mut dst = dev.alloc_zeros::<T>(n)?;
                let op = match op {
                    ReduceOp::Sum => NcclReduceOp::Sum,
                    ReduceOp::Max => NcclReduceOp::Max,
                };
                comm.all_reduce(&src, &mut dst, &op).map_err(|e| nccl_err("all_reduce", e))?;
                (dst, l.shape().clone())
            }
            Self::AllGather(c) => {
                let mut dst = dev.alloc_zeros::<T>(n * c.world_size)?;
                comm.all_gather(&src, &mut dst).map_err(|e| nccl_err("all_gather", e))?;
                let mut dims = vec![c.world_size];
                dims.extend_from_slice(l.dims());
                (dst, Shape::from(dims))
            }
            Self::Broadcast(_, root) => {
                let mut dst = dev.alloc_zeros::<T>(n)?;
                comm.broadcast(Some(&src), &mut dst, *root as i32).map_err(|e| nccl_err("broadcast", e))?;
                (dst, l.shape().clone())
            }
            Self::Recv(_, peer) => {
                let mut dst = dev.alloc_zeros::<T>(n)?;
                comm.recv(&mut dst, *peer as i32).map_err(|e| nccl_err("recv", e))?;
                (dst, l.shape().clone())
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), shape))
    }
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL ops need CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        with_nccl_type!(s.dtype(), "collectives", T => self.run::<T>(s, l))
    }
}

/// `ncclSend` of a contiguous CUDA tensor (inside a group).
fn send_raw(comm: &Comm, xs: &Tensor, peer: usize) -> Result<()> {
    fn go<T: NcclType + CudaDType>(comm: &Comm, s: &CudaStorage, l: &Layout, peer: usize) -> Result<()> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("NCCL send of a non-contiguous tensor".into()))?;
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        comm.send(&src, peer as i32).map_err(|e| nccl_err("send", e))
    }
    let (storage, layout) = xs.storage_and_layout();
    let Storage::Cuda(s) = &*storage else { candle_core::bail!("NCCL send needs a CUDA tensor") };
    with_nccl_type!(s.dtype(), "send", T => go::<T>(comm, s, layout, peer))
}

impl Collective for NcclComm {
    fn rank(&self) -> Rank {
        Rank(self.rank)
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn send(&self, xs: &Tensor, dst: Rank) -> Result<()> {
        self.host.send(xs, dst)
    }

    fn recv(&self, src: Rank, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.host.recv(src, shape, dtype)
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        xs.dim(dim)?;
        if self.world_size == 1 {
            return Ok(xs.clone());
        }
        // NCCL gathers along a new leading axis; move it into `dim`.
        let stacked = self.on_device(xs)?.apply_op1_no_bwd(&NcclOp::AllGather(self))?;
        let parts = (0..self.world_size).map(|r| stacked.get(r)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, dim)
    }

    fn broadcast(&self, xs: &Tensor, root: Rank) -> Result<Tensor> {
        if root.0 >= self.world_size {
            candle_core::bail!("broadcast: root {root} out of range for {} ranks", self.world_size);
        }
        if self.world_size == 1 {
            return Ok(xs.clone());
        }
        self.on_device(xs)?.apply_op1_no_bwd(&NcclOp::Broadcast(self, root.0))
    }

    fn all_to_all(&self, xs: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        let n = self.world_size;
        let len = xs.dim(split_dim)?;
        xs.dim(concat_dim)?;
        if len % n != 0 {
            candle_core::bail!("all_to_all: dim {split_dim} of {:?} not divisible by {n} ranks", xs.dims());
        }
        if n == 1 {
            return Ok(xs.clone());
        }
        let chunk = len / n;
        let xs = self.on_device(xs)?;
        let chunks =
            (0..n).map(|j| xs.narrow(split_dim, j * chunk, chunk)?.contiguous()).collect::<Result<Vec<_>>>()?;
        let mut parts: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        cudarc::nccl::result::group_start().map_err(|e| nccl_err("group_start", e))?;
        let enqueued = (|| -> Result<()> {
            for (peer, part) in parts.iter_mut().enumerate() {
                if peer == self.rank {
                    *part = Some(chunks[peer].clone());
                    continue;
                }
                send_raw(&self.lock()?.0, &chunks[peer], peer)?;
                *part = Some(chunks[peer].zeros_like()?.apply_op1_no_bwd(&NcclOp::Recv(self, peer))?);
            }
            Ok(())
        })();
        let ended = cudarc::nccl::result::group_end().map_err(|e| nccl_err("group_end", e));
        enqueued?;
        ended?;
        let parts = parts.into_iter().flatten().collect::<Vec<_>>();
        Tensor::cat(&parts, concat_dim)
    }

    fn all_reduce(&self, xs: &Tensor, op: ReduceOp) -> Result<Tensor> {
        if self.world_size == 1 {
            return Ok(xs.clone());
        }
        self.on_device(xs)?.apply_op1_no_bwd(&NcclOp::AllReduce(self, op))
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::ones(1, DType::F32, &Device::Cuda(self.device.clone()))?;
        let _ = one.apply_op1_no_bwd(&NcclOp::AllReduce(self, ReduceOp::Sum))?;
        Device::Cuda(self.device.clone()).synchronize()
    }

    fn sub_group(&self, ranks: &[Rank]) -> Result<Arc<dyn Collective>> {
        self.host.sub_group(ranks)
    }
}
