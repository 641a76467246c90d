//! A [`Collective`] wrapper that times every op (and every op of its sub-groups) into shared
//! counters: the "communication" side of `--report`'s comm-vs-compute split. Time is wall time
//! inside the call, so waiting for a slower peer counts as communication.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Result, Tensor};

use crate::parallel::comm::{Collective, PendingRecv, ReduceOp};
use crate::parallel::Rank;

/// Totals over every op of a [`TimedComm`] and its sub-groups.
#[derive(Debug, Default)]
pub struct CommStats {
    nanos: AtomicU64,
    calls: AtomicU64,
    bytes: AtomicU64,
}

impl CommStats {
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Starts counting from zero (a new job over the same communicators).
    pub fn reset(&self) {
        for c in [&self.nanos, &self.calls, &self.bytes] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Payload bytes this rank passed in (the tensor given to each op).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn time<T>(&self, bytes: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = Instant::now();
        let out = f();
        self.nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        out
    }
}

fn size(xs: &Tensor) -> usize {
    xs.elem_count() * xs.dtype().size_in_bytes()
}

#[derive(Debug, Clone)]
pub struct TimedComm {
    inner: Arc<dyn Collective>,
    stats: Arc<CommStats>,
}

impl TimedComm {
    pub fn new(inner: Arc<dyn Collective>, stats: Arc<CommStats>) -> Self {
        Self { inner, stats }
    }
}

impl Collective for TimedComm {
    fn rank(&self) -> Rank {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn send(&self, xs: &Tensor, dst: Rank) -> Result<()> {
        self.stats.time(size(xs), || self.inner.send(xs, dst))
    }

    fn recv(&self, src: Rank, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.stats.time(0, || self.inner.recv(src, shape, dtype))
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        self.stats.time(size(xs), || self.inner.all_gather(xs, dim))
    }

    fn all_gather_into(&self, xs: &Tensor, out: &Tensor) -> Result<()> {
        self.stats.time(size(xs), || self.inner.all_gather_into(xs, out))
    }

    fn broadcast(&self, xs: &Tensor, root: Rank) -> Result<Tensor> {
        self.stats.time(size(xs), || self.inner.broadcast(xs, root))
    }

    fn all_to_all(&self, xs: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        self.stats.time(size(xs), || self.inner.all_to_all(xs, split_dim, concat_dim))
    }

    fn all_reduce(&self, xs: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.stats.time(size(xs), || self.inner.all_reduce(xs, op))
    }

    fn barrier(&self) -> Result<()> {
        self.stats.time(0, || self.inner.barrier())
    }

    fn sub_group(&self, ranks: &[Rank]) -> Result<Arc<dyn Collective>> {
        Ok(Arc::new(Self { inner: self.inner.sub_group(ranks)?, stats: self.stats.clone() }))
    }

    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Arc<dyn Collective>>> {
        let inner = self.stats.time(0, || self.inner.split(color, key))?;
        Ok(inner.map(|inner| Arc::new(Self { inner, stats: self.stats.clone() }) as Arc<dyn Collective>))
    }

    fn send_recv(&self, sends: &[(Rank, Tensor)], recvs: &[(Rank, Vec<usize>, DType)]) -> Result<Vec<Tensor>> {
        let bytes = sends.iter().map(|(_, xs)| size(xs)).sum();
        self.stats.time(bytes, || self.inner.send_recv(sends, recvs))
    }

    /// The start and the wait are timed (the wait is what the caller could not hide).
    fn send_recv_start(
        &self,
        sends: &[(Rank, Tensor)],
        recvs: &[(Rank, Vec<usize>, DType)],
    ) -> Result<Box<dyn PendingRecv>> {
        let bytes = sends.iter().map(|(_, xs)| size(xs)).sum();
        let inner = self.stats.time(bytes, || self.inner.send_recv_start(sends, recvs))?;
        Ok(Box::new(TimedPending { inner, stats: self.stats.clone() }))
    }

    /// Not timed: the duplicate carries what runs beside the compute thread (FSDP prefetch), whose
    /// wall time is not time the step waits; the FSDP store reports its own waits.
    fn duplicate(&self) -> Result<Option<Arc<dyn Collective>>> {
        self.inner.duplicate()
    }

    fn abort(&self) {
        self.inner.abort();
    }
}

/// A [`TimedComm::send_recv_start`] in flight: its wait counts as communication (not as a call).
struct TimedPending {
    inner: Box<dyn PendingRecv>,
    stats: Arc<CommStats>,
}

impl PendingRecv for TimedPending {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        let t0 = Instant::now();
        let out = self.inner.wait();
        self.stats.nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::comm::ThreadComm;
    use candle_core::Device;

    /// Ops on the wrapper and on its sub-groups land in the same counters, with the input's bytes.
    #[test]
    fn counts_ops_of_the_world_and_its_sub_groups() {
        let comms = ThreadComm::world(2, std::time::Duration::from_secs(10));
        std::thread::scope(|s| {
            for comm in comms {
                s.spawn(move || {
                    let stats = Arc::new(CommStats::default());
                    let world = TimedComm::new(Arc::new(comm), stats.clone());
                    let xs = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
                    let out = world.all_gather(&xs, 0).unwrap();
                    assert_eq!(out.dims(), &[16]);
                    let pair = world.sub_group(&[Rank(0), Rank(1)]).unwrap();
                    pair.all_reduce_sum(&xs).unwrap();
                    pair.barrier().unwrap();
                    assert_eq!((stats.calls(), stats.bytes()), (3, 64));
                    assert!(stats.seconds() > 0.0);
                });
            }
        });
    }
}
