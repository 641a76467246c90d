//! NCCL backend (feature `cuda`): one process per GPU, NCCL 2.28 through cudarc's raw bindings.
//!
//! - Every op runs on the device, on the worker's compute stream (candle's stream of the device), with
//!   no host staging: `all_reduce`, `all_gather`, `broadcast` are NCCL collectives; `all_to_all`,
//!   `send`, `recv` and `send_recv` are `ncclSend`/`ncclRecv` inside one NCCL group each (so the
//!   halo pattern, where both neighbours send first, cannot deadlock). `send_recv_start` (the VAE
//!   halo exchange) runs its group on a side stream forked from the compute stream, which waits
//!   for it only when the rows are asked for: the exchange overlaps the interior rows' convs.
//! - Groups: [`Collective::split`] is `ncclCommSplit` (a real device communicator per parallel group,
//!   made once per plan by `PlanGroups::new`); only the rarely used [`Collective::sub_group`] still
//!   goes through the host-memory socket mesh every world also forms.
//! - Failure: [`Collective::abort`] (the worker calls it when the supervisor stops the world) and a
//!   watchdog thread (an op not complete on the device within `--comm-timeout-ms`) call
//!   `ncclCommAbort` on every communicator of the world, which also stops kernels spinning on a dead
//!   peer; later ops fail at once with the reason.
//!
//! The world's unique id is made by rank 0 and relayed by the supervisor (`Hello` → `Init`). Device
//! probing (`tessera-worker --doctor`) is not here but in `runtime::doctor`.

// NCCL communicators are raw handles used through cudarc's `result`/`sys` bindings (its safe `Comm`
// can neither split nor abort from another thread); every `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use cudarc::driver::{CudaEvent, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use cudarc::nccl::result as nccl;
use cudarc::nccl::safe::{Id, NcclType};
use cudarc::nccl::sys;

use super::{split_members, Collective, CommError, PendingRecv, ReduceOp};
use crate::parallel::Rank;

/// Bytes of an NCCL unique id.
pub const NCCL_ID_BYTES: usize = 128;

/// `NCCL_SPLIT_NOCOLOR` of nccl.h: the rank gets no communicator from `ncclCommSplit`.
const NCCL_SPLIT_NOCOLOR: i32 = -1;

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

fn nccl_err(what: &str, e: nccl::NcclError) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL {what} failed: {:?}", e.0))
}

/// One NCCL communicator. The pointer is swapped to null exactly once, by [`Handle::abort`] or on
/// drop, so `ncclCommAbort` runs once per communicator.
struct Handle {
    comm: AtomicPtr<sys::ncclComm>,
    /// NCCL's rule: no concurrent calls on one communicator. Held for the enqueue of each op.
    calls: Mutex<()>,
}

impl Handle {
    fn new(comm: sys::ncclComm_t) -> Arc<Self> {
        Arc::new(Self { comm: AtomicPtr::new(comm), calls: Mutex::new(()) })
    }

    fn abort(&self) {
        let comm = self.comm.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !comm.is_null() {
            // SAFETY: `comm` came from ncclCommInitRank/ncclCommSplit and the swap above hands it
            // to exactly one caller. ncclCommAbort is NCCL's documented way to stop a communicator
            // whose operations may still be in flight (it makes their kernels return); it is only
            // called when the job is being torn down (a peer failed, a timeout, the world stops),
            // after which ops see the null pointer and fail without calling NCCL.
            if let Err(e) = unsafe { nccl::comm_abort(comm) } {
                tracing::warn!("ncclCommAbort: {:?}", e.0);
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.abort();
    }
}

/// One op that has been enqueued and not yet seen complete.
struct InFlight {
    done: CudaEvent,
    since: Instant,
    what: &'static str,
    group: String,
}

/// What the communicators of one world share: every handle (for abort), the first failure, and the
/// watchdog's queue of ops in flight.
struct Shared {
    handles: Mutex<Vec<Weak<Handle>>>,
    failure: Mutex<Option<String>>,
    in_flight: Mutex<VecDeque<InFlight>>,
    timeout: Duration,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // A poisoned lock only means a panic elsewhere; the data (lists, an Option) stays valid.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, handle: &Arc<Handle>) {
        let mut handles = Self::lock(&self.handles);
        handles.retain(|h| h.strong_count() > 0);
        handles.push(Arc::downgrade(handle));
    }

    fn check(&self) -> Result<()> {
        match &*Self::lock(&self.failure) {
            Some(reason) => Err(CommError::Setup(format!("NCCL communicators aborted: {reason}")).into()),
            None => Ok(()),
        }
    }

    /// Aborts every communicator of the world (idempotent; the first reason is kept).
    fn abort(&self, reason: &str) {
        {
            let mut failure = Self::lock(&self.failure);
            if failure.is_none() {
                *failure = Some(reason.to_string());
                tracing::error!("aborting NCCL communicators: {reason}");
            }
        }
        let handles: Vec<Arc<Handle>> = Self::lock(&self.handles).iter().filter_map(Weak::upgrade).collect();
        for h in handles {
            h.abort();
        }
        Self::lock(&self.in_flight).clear();
    }

    /// One watchdog pass: drops completed ops; aborts when the oldest is older than the timeout.
    fn watch_once(&self) {
        let overdue = {
            let mut q = Self::lock(&self.in_flight);
            while q.front().is_some_and(|op| op.done.is_complete()) {
                q.pop_front();
            }
            q.front().filter(|op| op.since.elapsed() > self.timeout).map(|op| {
                format!(
                    "{} in {} not complete on the device after {:.0} s (a peer rank is stuck or dead; \
                     try NCCL_DEBUG=INFO, NCCL_P2P_DISABLE=1 or NCCL_SHM_DISABLE=1)",
                    op.what,
                    op.group,
                    self.timeout.as_secs_f64()
                )
            })
        };
        if let Some(reason) = overdue {
            self.abort(&reason);
        }
    }
}

/// Polls the world's in-flight ops every 100 ms until the world is dropped.
fn spawn_watchdog(shared: &Arc<Shared>) -> std::io::Result<()> {
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new().name("nccl-watchdog".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        match weak.upgrade() {
            Some(shared) => shared.watch_once(),
            None => break,
        }
    })?;
    Ok(())
}

/// A communicator of the world or of one of its [`Collective::split`] groups.
pub struct NcclComm {
    handle: Arc<Handle>,
    shared: Arc<Shared>,
    device: CudaDevice,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
    /// World ranks of the members, for messages.
    members: Vec<usize>,
    /// Host-memory mesh of the same members, for [`Collective::sub_group`] only.
    host: Arc<dyn Collective>,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclComm(rank {} of {}, world ranks {:?}, {:?})",
            self.rank, self.world_size, self.members, self.device
        )
    }
}

/// Device pointers for one op; the `SyncOnDrop` guards live until the op is enqueued.
fn view<'a, T: DeviceRepr + CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<cudarc::driver::CudaView<'a, T>> {
    let (start, end) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("NCCL op on a non-contiguous tensor".into()))?;
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

impl NcclComm {
    /// `ncclCommInitRank` for the world. Blocks until every rank has called it. `timeout`: how long
    /// an op may stay incomplete on the device before the watchdog aborts the world's communicators.
    pub fn new(
        device: &Device,
        rank: usize,
        world_size: usize,
        id: Id,
        host: Arc<dyn Collective>,
        timeout: Duration,
    ) -> std::result::Result<Self, CommError> {
        let Device::Cuda(cuda) = device else {
            return Err(CommError::Setup("the NCCL backend needs a CUDA device".into()));
        };
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        let uid = sys::ncclUniqueId { internal: *id.internal() };
        // SAFETY: `comm` is a valid out-pointer; the id came from rank 0's ncclGetUniqueId.
        unsafe { nccl::comm_init_rank(&mut comm, world_size as i32, uid, rank as i32) }
            .map_err(|e| CommError::Setup(format!("ncclCommInitRank (rank {rank} of {world_size}): {:?}", e.0)))?;
        let shared = Arc::new(Shared {
            handles: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            in_flight: Mutex::new(VecDeque::new()),
            timeout,
        });
        spawn_watchdog(&shared).map_err(|e| CommError::Setup(format!("NCCL watchdog thread: {e}")))?;
        let handle = Handle::new(comm);
        shared.register(&handle);
        Ok(Self {
            handle,
            shared,
            device: cuda.clone(),
            stream: cuda.cuda_stream(),
            rank,
            world_size,
            members: (0..world_size).collect(),
            host,
        })
    }

    fn group_label(&self) -> String {
        format!("NCCL group of world ranks {:?}", self.members)
    }

    /// Runs `enqueue` with the raw communicator and stream under the call lock, then hands the op
    /// to the watchdog.
    fn call(
        &self,
        what: &'static str,
        enqueue: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<()>,
    ) -> Result<()> {
        self.call_on(&self.stream, what, enqueue)
    }

    /// [`Self::call`] on `stream` (the compute stream, or a side stream of `send_recv_start`).
    fn call_on(
        &self,
        stream: &Arc<CudaStream>,
        what: &'static str,
        enqueue: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<()>,
    ) -> Result<()> {
        self.shared.check()?;
        {
            let _calls = Shared::lock(&self.handle.calls);
            let comm = self.handle.comm.load(Ordering::Acquire);
            if comm.is_null() {
                self.shared.check()?;
                candle_core::bail!("NCCL {what}: the communicator of {} was aborted", self.group_label());
            }
            enqueue(comm, stream.cu_stream() as sys::cudaStream_t)?;
        }
        let done = stream.record_event(None).map_err(|e| candle_core::Error::Msg(format!("NCCL {what}: {e}")))?;
        Shared::lock(&self.shared.in_flight).push_back(InFlight {
            done,
            since: Instant::now(),
            what,
            group: self.group_label(),
        });
        Ok(())
    }

    fn on_device(&self, xs: &Tensor) -> Result<Tensor> {
        match xs.device() {
            Device::Cuda(d) if d.same_device(&self.device) => xs.contiguous(),
            _ => xs.to_device(&Device::Cuda(self.device.clone()))?.contiguous(),
        }
    }

    /// An uninitialised device buffer shaped `dims` (NCCL writes every element before it is read).
    fn output<T: DeviceRepr + CudaDType>(&self, dims: &[usize]) -> Result<CudaStorage> {
        let n: usize = dims.iter().product();
        // SAFETY: the buffer is only handed out after an NCCL op wrote all `n` elements of it.
        let slice = unsafe { self.device.alloc::<T>(n) }?;
        Ok(CudaStorage::wrap_cuda_slice(slice, self.device.clone()))
    }

    /// `sends` and `recvs` as one NCCL group; returns the received tensors in `recvs` order.
    fn grouped_p2p(
        &self,
        what: &'static str,
        sends: &[(usize, Tensor)],
        recvs: &[(usize, Vec<usize>, DType)],
    ) -> Result<Vec<Tensor>> {
        let (sends, outs) = self.p2p_buffers(what, sends, recvs)?;
        self.enqueue_p2p(&self.stream, what, &sends, &outs)?;
        Ok(outs.into_iter().map(|(_, t)| t).collect())
    }

    /// The device copies of `sends` and fresh receive buffers for `recvs` (allocated on the
    /// compute stream), with every peer checked.
    #[allow(clippy::type_complexity)]
    fn p2p_buffers(
        &self,
        what: &'static str,
        sends: &[(usize, Tensor)],
        recvs: &[(usize, Vec<usize>, DType)],
    ) -> Result<(Vec<(usize, Tensor)>, Vec<(usize, Tensor)>)> {
        let sends = sends.iter().map(|(p, t)| Ok((*p, self.on_device(t)?))).collect::<Result<Vec<_>>>()?;
        let outs = recvs
            .iter()
            .map(|(p, shape, dtype)| {
                let storage = with_nccl_type!(*dtype, "recv", T => self.output::<T>(shape))?;
                let t = Tensor::from_storage(Storage::Cuda(storage), shape.as_slice(), BackpropOp::none(), false);
                Ok((*p, t))
            })
            .collect::<Result<Vec<_>>>()?;
        for (peer, _) in sends.iter().chain(outs.iter()) {
            if *peer >= self.world_size || *peer == self.rank {
                candle_core::bail!("NCCL {what}: peer {peer} invalid for rank {} of {}", self.rank, self.world_size);
            }
        }
        Ok((sends, outs))
    }

    /// Enqueues `sends` and the receives into `outs` as one NCCL group on `on`.
    fn enqueue_p2p(
        &self,
        on: &Arc<CudaStream>,
        what: &'static str,
        sends: &[(usize, Tensor)],
        outs: &[(usize, Tensor)],
    ) -> Result<()> {
        self.call_on(on, what, |comm, stream| {
            nccl::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
            let enqueued = (|| -> Result<()> {
                for (peer, xs) in sends {
                    p2p(comm, on, stream, xs, *peer, true)?;
                }
                for (peer, xs) in outs {
                    p2p(comm, on, stream, xs, *peer, false)?;
                }
                Ok(())
            })();
            let ended = nccl::group_end().map_err(|e| nccl_err("ncclGroupEnd", e));
            enqueued?;
            ended.map(|_| ())
        })
    }
}

/// A [`NcclComm::send_recv_start`] in flight on its side stream; the buffers live until the compute
/// stream has waited for it.
struct SidePending {
    compute: Arc<CudaStream>,
    side: Arc<CudaStream>,
    #[allow(dead_code)] // held, not read: the sends must outlive the exchange
    sends: Vec<(usize, Tensor)>,
    outs: Vec<(usize, Tensor)>,
}

impl PendingRecv for SidePending {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        self.compute.join(&self.side).map_err(|e| candle_core::Error::Msg(format!("NCCL side stream join: {e}")))?;
        Ok(self.outs.into_iter().map(|(_, t)| t).collect())
    }
}

/// `ncclSend` (`send`) or `ncclRecv` of a contiguous CUDA tensor, inside a group.
fn p2p(
    comm: sys::ncclComm_t,
    cu: &CudaStream,
    stream: sys::cudaStream_t,
    xs: &Tensor,
    peer: usize,
    send: bool,
) -> Result<()> {
    fn go<T: NcclType + CudaDType + DeviceRepr>(
        (comm, cu, stream): (sys::ncclComm_t, &CudaStream, sys::cudaStream_t),
        s: &CudaStorage,
        l: &Layout,
        peer: usize,
        send: bool,
    ) -> Result<()> {
        let v = view::<T>(s, l)?;
        let (ptr, _sync) = v.device_ptr(cu);
        // SAFETY: `ptr` addresses `v.len()` live elements of type T on this device (the tensor
        // outlives the call: the caller holds it until the group ends and the stream orders later
        // uses); `comm`/`stream` are live (checked by `NcclComm::call`). A receive writes into the
        // storage of a tensor that was created for it and is not shared yet.
        unsafe {
            if send {
                nccl::send(ptr as _, v.len(), T::as_nccl_type(), peer as i32, comm, stream)
            } else {
                nccl::recv(ptr as _, v.len(), T::as_nccl_type(), peer as i32, comm, stream)
            }
        }
        .map(|_| ())
        .map_err(|e| nccl_err(if send { "ncclSend" } else { "ncclRecv" }, e))
    }
    let (storage, layout) = xs.storage_and_layout();
    let Storage::Cuda(s) = &*storage else { candle_core::bail!("NCCL send/recv needs a CUDA tensor") };
    with_nccl_type!(s.dtype(), "send/recv", T => go::<T>((comm, cu, stream), s, layout, peer, send))
}

/// One NCCL collective as a candle op: reads the input's storage, returns freshly allocated output.
enum NcclOp<'a> {
    AllReduce(&'a NcclComm, ReduceOp),
    /// Gathers along a new leading axis.
    AllGather(&'a NcclComm),
    Broadcast(&'a NcclComm, usize),
}

impl NcclOp<'_> {
    fn comm(&self) -> &NcclComm {
        match self {
            Self::AllReduce(c, _) | Self::AllGather(c) | Self::Broadcast(c, _) => c,
        }
    }

    fn run<T: NcclType + CudaDType + DeviceRepr>(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let c = self.comm();
        let src = view::<T>(s, l)?;
        let n = src.len();
        let mut dims = l.dims().to_vec();
        if let Self::AllGather(_) = self {
            dims.insert(0, c.world_size);
        }
        let mut out = c.output::<T>(&dims)?;
        let dst = out.as_cuda_slice_mut::<T>()?;
        c.call("collective", |comm, stream| {
            let (src_ptr, _s) = src.device_ptr(&c.stream);
            let (dst_ptr, _d) = dst.device_ptr_mut(&c.stream);
            let ty = T::as_nccl_type();
            // SAFETY: `src_ptr` addresses `n` live elements and `dst_ptr` `n` (all-gather:
            // `n * world_size`) freshly allocated ones of type T on this device; `comm`/`stream`
            // are live (checked by `NcclComm::call`).
            unsafe {
                match self {
                    Self::AllReduce(_, op) => {
                        let op = match op {
                            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
                            ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
                        };
                        nccl::all_reduce(src_ptr as _, dst_ptr as _, n, ty, op, comm, stream)
                    }
                    Self::AllGather(_) => nccl::all_gather(src_ptr as _, dst_ptr as _, n, ty, comm, stream),
                    Self::Broadcast(_, root) => {
                        nccl::broadcast(src_ptr as _, dst_ptr as _, n, ty, *root as i32, comm, stream)
                    }
                }
            }
            .map(|_| ())
            .map_err(|e| nccl_err("collective", e))
        })?;
        Ok((out, Shape::from(dims)))
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

impl Collective for NcclComm {
    fn rank(&self) -> Rank {
        Rank(self.rank)
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn send(&self, xs: &Tensor, dst: Rank) -> Result<()> {
        self.grouped_p2p("send", &[(dst.0, xs.clone())], &[]).map(|_| ())
    }

    fn recv(&self, src: Rank, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let mut got = self.grouped_p2p("recv", &[], &[(src.0, shape.to_vec(), dtype)])?;
        got.pop().ok_or_else(|| candle_core::Error::Msg("NCCL recv: nothing received".into()))
    }

    fn send_recv(&self, sends: &[(Rank, Tensor)], recvs: &[(Rank, Vec<usize>, DType)]) -> Result<Vec<Tensor>> {
        let sends: Vec<(usize, Tensor)> = sends.iter().map(|(r, t)| (r.0, t.clone())).collect();
        let recvs: Vec<(usize, Vec<usize>, DType)> = recvs.iter().map(|(r, s, d)| (r.0, s.clone(), *d)).collect();
        self.grouped_p2p("send_recv", &sends, &recvs)
    }

    /// The exchange on a side stream: it starts after what the compute stream has enqueued so far
    /// (the rows to send, the receive buffers), runs beside what the caller enqueues next (the halo
    /// conv's interior rows), and `wait` makes the compute stream wait for it (no host sync).
    fn send_recv_start(
        &self,
        sends: &[(Rank, Tensor)],
        recvs: &[(Rank, Vec<usize>, DType)],
    ) -> Result<Box<dyn PendingRecv>> {
        let sends: Vec<(usize, Tensor)> = sends.iter().map(|(r, t)| (r.0, t.clone())).collect();
        let recvs: Vec<(usize, Vec<usize>, DType)> = recvs.iter().map(|(r, s, d)| (r.0, s.clone(), *d)).collect();
        let (sends, outs) = self.p2p_buffers("send_recv_start", &sends, &recvs)?;
        let side = self.stream.fork().map_err(|e| candle_core::Error::Msg(format!("NCCL side stream: {e}")))?;
        self.enqueue_p2p(&side, "send_recv_start", &sends, &outs)?;
        Ok(Box::new(SidePending { compute: self.stream.clone(), side, sends, outs }))
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        xs.dim(dim)?;
        if self.world_size == 1 {
            return Ok(xs.clone());
        }
        // NCCL gathers along a new leading axis; move it into `dim` (a device copy unless dim 0).
        let stacked = self.on_device(xs)?.apply_op1_no_bwd(&NcclOp::AllGather(self))?;
        if dim == 0 {
            let mut dims = xs.dims().to_vec();
            dims[0] *= self.world_size;
            return stacked.reshape(dims);
        }
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
        let peers: Vec<usize> = (0..n).filter(|&p| p != self.rank).collect();
        let sends: Vec<(usize, Tensor)> = peers.iter().map(|&p| (p, chunks[p].clone())).collect();
        let recvs: Vec<(usize, Vec<usize>, DType)> =
            peers.iter().map(|&p| (p, chunks[p].dims().to_vec(), xs.dtype())).collect();
        let mut received = self.grouped_p2p("all_to_all", &sends, &recvs)?.into_iter();
        let parts = (0..n)
            .map(|p| {
                if p == self.rank {
                    Ok(chunks[p].clone())
                } else {
                    received.next().ok_or_else(|| candle_core::Error::Msg("all_to_all: missing part".into()))
                }
            })
            .collect::<Result<Vec<_>>>()?;
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

    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Arc<dyn Collective>>> {
        // The members first (one small all-gather): the same rule the socket backend uses, and the
        // size and host mesh of the new group.
        let members = split_members(self, color, key)?;
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        let nccl_color = match color {
            Some(c) => i32::try_from(c).map_err(|_| candle_core::Error::Msg(format!("split: color {c} too large")))?,
            None => NCCL_SPLIT_NOCOLOR,
        };
        self.shared.check()?;
        {
            let _calls = Shared::lock(&self.handle.calls);
            let parent = self.handle.comm.load(Ordering::Acquire);
            if parent.is_null() {
                candle_core::bail!("NCCL split: the communicator of {} was aborted", self.group_label());
            }
            // SAFETY: `parent` is live (non-null under the call lock); `comm` is a valid out-pointer;
            // a null config makes the child inherit the parent's (blocking) configuration.
            unsafe { sys::ncclCommSplit(parent, nccl_color, key as i32, &mut comm, std::ptr::null_mut()) }
                .result()
                .map_err(|e| nccl_err("ncclCommSplit", e))?;
        }
        let Some(members) = members else { return Ok(None) };
        if comm.is_null() {
            candle_core::bail!("ncclCommSplit returned no communicator for color {nccl_color}");
        }
        let handle = Handle::new(comm);
        self.shared.register(&handle);
        let rank = members.iter().position(|r| r.0 == self.rank).unwrap_or(0);
        Ok(Some(Arc::new(NcclComm {
            handle,
            shared: self.shared.clone(),
            device: self.device.clone(),
            stream: self.stream.clone(),
            rank,
            world_size: members.len(),
            members: members.iter().map(|r| self.members[r.0]).collect(),
            host: self.host.sub_group(&members)?,
        })))
    }

    fn duplicate(&self) -> Result<Option<Arc<dyn Collective>>> {
        // One color for every member, keyed by rank: the same members in the same order, on a
        // second device communicator. Its ops are enqueued on the calling thread's stream (candle's
        // per-thread default stream), so a second thread's gathers run beside the compute stream.
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        self.shared.check()?;
        {
            let _calls = Shared::lock(&self.handle.calls);
            let parent = self.handle.comm.load(Ordering::Acquire);
            if parent.is_null() {
                candle_core::bail!("NCCL duplicate: the communicator of {} was aborted", self.group_label());
            }
            // SAFETY: as in `split`: `parent` is live under the call lock, `comm` a valid out-pointer.
            unsafe { sys::ncclCommSplit(parent, 0, self.rank as i32, &mut comm, std::ptr::null_mut()) }
                .result()
                .map_err(|e| nccl_err("ncclCommSplit", e))?;
        }
        if comm.is_null() {
            candle_core::bail!("ncclCommSplit returned no communicator for the duplicate of {}", self.group_label());
        }
        let handle = Handle::new(comm);
        self.shared.register(&handle);
        Ok(Some(Arc::new(NcclComm {
            handle,
            shared: self.shared.clone(),
            device: self.device.clone(),
            stream: self.stream.clone(),
            rank: self.rank,
            world_size: self.world_size,
            members: self.members.clone(),
            host: self.host.clone(),
        })))
    }

    fn abort(&self) {
        self.shared.abort("the job is being torn down (a peer failed or the world is stopping)");
        self.host.abort();
    }
}
