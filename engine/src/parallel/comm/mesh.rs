//! `MeshComm`: the collective algorithms shared by the socket and thread backends, written once over
//! a point-to-point [`Transport`] (a dedicated FIFO per ordered pair of ranks).
//!
//! Why this is deadlock-free: a transport's `send` only enqueues (bounded) and a per-peer writer drains
//! the queue, so a rank that sends to everybody and then reads from everybody never waits on its own
//! reads. Why results are bit-identical on all ranks: `all_reduce` is a reduce-scatter (the owner of
//! each chunk adds the contributions in rank order) followed by an all-gather of the reduced chunks.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::wire::{tensor_from_bytes, tensor_to_bytes, Frame, FrameHeader, OpCode, Payload, WireDType};
use super::{check_sub_group, Collective, CommError, PendingRecv, Received, ReduceOp};
use crate::parallel::Rank;

/// Point-to-point byte transport between the global ranks of a world.
pub(crate) trait Transport: std::fmt::Debug + Send + Sync {
    fn world_size(&self) -> usize;
    fn rank(&self) -> usize;
    /// Queues `frame` for global rank `peer`. Blocks only while that peer's bounded queue is full.
    fn send(&self, peer: usize, frame: Frame) -> std::result::Result<(), CommError>;
    /// The next frame global rank `peer` sent to this rank.
    fn recv(&self, peer: usize) -> std::result::Result<Frame, CommError>;
    /// After a failure: make every pending and future send/recv fail fast, so that peers blocked on
    /// this rank error out instead of waiting for a timeout.
    fn poison(&self);
}

/// A group of ranks over a shared transport. Sub-groups share the parent's streams; frames carry a
/// group tag so that misuse is reported, not silently mixed. A world may have several *lanes*
/// (independent transports between the same ranks, e.g. a second set of sockets): a group's ops run
/// on one lane, and [`Collective::duplicate`] moves the same group to the next lane, so that two
/// threads can each run one op at a time without their frames interleaving.
#[derive(Clone)]
pub struct MeshComm {
    /// `lanes[lane]`, the transport this group's ops use.
    transport: Arc<dyn Transport>,
    lanes: Arc<Vec<Arc<dyn Transport>>>,
    lane: usize,
    /// Global rank of each member; index = rank within this group.
    members: Arc<Vec<usize>>,
    me: usize,
    group: u64,
    /// Where `recv` places tensors (ops with an input use the input's device).
    device: Device,
}

impl std::fmt::Debug for MeshComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshComm")
            .field("rank", &self.me)
            .field("members", &self.members)
            .field("transport", &self.transport)
            .finish()
    }
}

/// FNV-1a over the member list: the same on every member, different for different groups.
fn group_tag(members: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for m in members {
        for b in (*m as u64).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Element range owned by member `i` of `n` when `numel` elements are split as evenly as possible.
fn chunk_range(numel: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    (numel * i / n)..(numel * (i + 1) / n)
}

impl MeshComm {
    /// The world over `lanes` (at least one; every lane joins the same ranks), running on lane 0.
    pub(crate) fn world(lanes: Vec<Arc<dyn Transport>>) -> Self {
        let transport = lanes[0].clone();
        let members: Vec<usize> = (0..transport.world_size()).collect();
        let me = transport.rank();
        Self {
            group: group_tag(&members),
            members: Arc::new(members),
            me,
            transport,
            lanes: Arc::new(lanes),
            lane: 0,
            device: Device::Cpu,
        }
    }

    /// Places tensors from `recv` on `device` (e.g. a CUDA device whose tensors travel via host memory).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    fn fail(&self, err: CommError) -> candle_core::Error {
        self.poison_all();
        err.into()
    }

    /// A failure on one lane fails the rank: every lane is poisoned, so nothing keeps waiting.
    fn poison_all(&self) {
        for lane in self.lanes.iter() {
            lane.poison();
        }
    }

    fn send_to(&self, member: usize, header: FrameHeader, payload: Payload) -> Result<()> {
        self.transport.send(self.members[member], Frame { header, payload }).map_err(|e| self.fail(e))
    }

    /// Receives from `member` and checks that it is the expected op (and shape, when given).
    fn recv_from(&self, member: usize, op: OpCode, expected: Option<&FrameHeader>) -> Result<Frame> {
        let peer = self.members[member];
        let frame = self.transport.recv(peer).map_err(|e| self.fail(e))?;
        let h = &frame.header;
        let matches =
            h.op == op && h.group == self.group && expected.is_none_or(|e| e.dtype == h.dtype && e.shape == h.shape);
        if !matches {
            let describe = |op: OpCode, group: u64, dtype: Option<WireDType>, shape: Option<&[usize]>| {
                format!("{op:?} in group {group:016x} with {dtype:?} {shape:?}")
            };
            let err = CommError::Mismatch {
                peer,
                expected: describe(op, self.group, expected.map(|e| e.dtype), expected.map(|e| e.shape.as_slice())),
                received: describe(h.op, h.group, Some(h.dtype), Some(&h.shape)),
            };
            return Err(self.fail(err));
        }
        Ok(frame)
    }

    fn header(&self, op: OpCode, dtype: DType, shape: &[usize]) -> Result<FrameHeader> {
        Ok(FrameHeader { op, group: self.group, dtype: WireDType::from_dtype(dtype)?, shape: shape.to_vec() })
    }

    fn check_member(&self, r: Rank, what: &str) -> Result<usize> {
        if r.0 >= self.members.len() {
            candle_core::bail!("{what}: rank {r} out of range for a group of {}", self.members.len());
        }
        Ok(r.0)
    }

    fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(move |&m| m != self.me)
    }

    fn reduce_pair(acc: Tensor, part: &Tensor, op: ReduceOp) -> Result<Tensor> {
        match op {
            ReduceOp::Sum => acc + part,
            ReduceOp::Max => acc.maximum(part),
        }
    }
}

impl Collective for MeshComm {
    fn rank(&self) -> Rank {
        Rank(self.me)
    }

    fn world_size(&self) -> usize {
        self.members.len()
    }

    fn send(&self, xs: &Tensor, dst: Rank) -> Result<()> {
        let dst = self.check_member(dst, "send")?;
        if dst == self.me {
            candle_core::bail!("send: rank {dst} cannot send to itself");
        }
        let header = self.header(OpCode::Send, xs.dtype(), xs.dims())?;
        self.send_to(dst, header, Payload::whole(Arc::new(tensor_to_bytes(xs)?)))
    }

    fn recv(&self, src: Rank, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let src = self.check_member(src, "recv")?;
        if src == self.me {
            candle_core::bail!("recv: rank {src} cannot receive from itself");
        }
        let expected = self.header(OpCode::Send, dtype, shape)?;
        let frame = self.recv_from(src, OpCode::Send, Some(&expected))?;
        tensor_from_bytes(frame.payload.as_slice(), expected.dtype, shape, &self.device)
    }

    fn all_gather(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        xs.dim(dim)?;
        if self.members.len() == 1 {
            return Ok(xs.clone());
        }
        let header = self.header(OpCode::AllGather, xs.dtype(), xs.dims())?;
        let bytes = Arc::new(tensor_to_bytes(xs)?);
        for peer in self.peers() {
            self.send_to(peer, header.clone(), Payload::whole(bytes.clone()))?;
        }
        let mut parts = Vec::with_capacity(self.members.len());
        for member in 0..self.members.len() {
            if member == self.me {
                parts.push(xs.clone());
            } else {
                let frame = self.recv_from(member, OpCode::AllGather, Some(&header))?;
                parts.push(tensor_from_bytes(frame.payload.as_slice(), header.dtype, xs.dims(), xs.device())?);
            }
        }
        Tensor::cat(&parts, dim)
    }

    /// Each peer's slice is written into its rows of `out` as it arrives: besides `out`, the
    /// transient is the wire bytes and one decoded slice at a time.
    fn all_gather_into(&self, xs: &Tensor, out: &Tensor) -> Result<()> {
        super::check_gather_into(xs, out, self.members.len())?;
        let rows = xs.dim(0)?;
        if self.members.len() == 1 {
            return out.slice_set(xs, 0, 0);
        }
        let header = self.header(OpCode::AllGather, xs.dtype(), xs.dims())?;
        let bytes = Arc::new(tensor_to_bytes(xs)?);
        for peer in self.peers() {
            self.send_to(peer, header.clone(), Payload::whole(bytes.clone()))?;
        }
        drop(bytes);
        for member in 0..self.members.len() {
            if member == self.me {
                out.slice_set(xs, 0, member * rows)?;
            } else {
                let frame = self.recv_from(member, OpCode::AllGather, Some(&header))?;
                let part = tensor_from_bytes(frame.payload.as_slice(), header.dtype, xs.dims(), xs.device())?;
                drop(frame);
                out.slice_set(&part, 0, member * rows)?;
            }
        }
        Ok(())
    }

    fn broadcast(&self, xs: &Tensor, root: Rank) -> Result<Tensor> {
        let root = self.check_member(root, "broadcast")?;
        let header = self.header(OpCode::Broadcast, xs.dtype(), xs.dims())?;
        if root == self.me {
            let bytes = Arc::new(tensor_to_bytes(xs)?);
            for peer in self.peers() {
                self.send_to(peer, header.clone(), Payload::whole(bytes.clone()))?;
            }
            return Ok(xs.clone());
        }
        let frame = self.recv_from(root, OpCode::Broadcast, Some(&header))?;
        tensor_from_bytes(frame.payload.as_slice(), header.dtype, xs.dims(), xs.device())
    }

    fn all_to_all(&self, xs: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        let n = self.members.len();
        let len = xs.dim(split_dim)?;
        xs.dim(concat_dim)?;
        if len % n != 0 {
            candle_core::bail!(
                "all_to_all: dim {split_dim} of {:?} has size {len}, not divisible by the group size {n}",
                xs.dims()
            );
        }
        let chunk = len / n;
        let chunks = (0..n).map(|j| xs.narrow(split_dim, j * chunk, chunk)).collect::<Result<Vec<_>>>()?;
        if n == 1 {
            return Ok(xs.clone());
        }
        let header = self.header(OpCode::AllToAll, xs.dtype(), chunks[0].dims())?;
        for peer in self.peers() {
            self.send_to(peer, header.clone(), Payload::whole(Arc::new(tensor_to_bytes(&chunks[peer])?)))?;
        }
        let mut parts = Vec::with_capacity(n);
        for (member, own) in chunks.iter().enumerate() {
            if member == self.me {
                parts.push(own.clone());
            } else {
                let frame = self.recv_from(member, OpCode::AllToAll, Some(&header))?;
                parts.push(tensor_from_bytes(frame.payload.as_slice(), header.dtype, &header.shape, xs.device())?);
            }
        }
        Tensor::cat(&parts, concat_dim)
    }

    fn all_reduce(&self, xs: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let n = self.members.len();
        if n == 1 {
            return Ok(xs.clone());
        }
        let dtype = WireDType::from_dtype(xs.dtype())?;
        let esz = dtype.size_in_bytes();
        let numel = xs.elem_count();
        let bytes = Arc::new(tensor_to_bytes(xs)?);
        let byte_range = |i: usize| {
            let r = chunk_range(numel, n, i);
            r.start * esz..r.end * esz
        };
        let chunk_header = |op_code, i: usize| self.header(op_code, xs.dtype(), &[chunk_range(numel, n, i).len()]);

        // Reduce-scatter: member j owns chunk j and adds everyone's contribution in rank order.
        for peer in self.peers() {
            self.send_to(peer, chunk_header(OpCode::ReduceScatter, peer)?, Payload::slice(&bytes, byte_range(peer)))?;
        }
        let mine = chunk_header(OpCode::ReduceScatter, self.me)?;
        let mut acc: Option<Tensor> = None;
        for member in 0..n {
            let part_bytes = if member == self.me {
                Payload::slice(&bytes, byte_range(self.me))
            } else {
                self.recv_from(member, OpCode::ReduceScatter, Some(&mine))?.payload
            };
            if mine.shape[0] == 0 {
                continue;
            }
            let part = tensor_from_bytes(part_bytes.as_slice(), dtype, &mine.shape, &Device::Cpu)?;
            acc = Some(match acc {
                None => part,
                Some(acc) => Self::reduce_pair(acc, &part, op)?,
            });
        }
        let reduced = Arc::new(match acc {
            Some(acc) => tensor_to_bytes(&acc)?,
            None => Vec::new(),
        });

        // All-gather of the reduced chunks, straight into one buffer.
        let gathered_header = chunk_header(OpCode::ReduceGather, self.me)?;
        for peer in self.peers() {
            self.send_to(peer, gathered_header.clone(), Payload::whole(reduced.clone()))?;
        }
        let mut out = Vec::with_capacity(numel * esz);
        for member in 0..n {
            if member == self.me {
                out.extend_from_slice(&reduced);
            } else {
                let expected = chunk_header(OpCode::ReduceGather, member)?;
                let frame = self.recv_from(member, OpCode::ReduceGather, Some(&expected))?;
                out.extend_from_slice(frame.payload.as_slice());
            }
        }
        tensor_from_bytes(&out, dtype, xs.dims(), xs.device())
    }

    fn barrier(&self) -> Result<()> {
        let header = self.header(OpCode::Barrier, DType::U8, &[0])?;
        for peer in self.peers() {
            self.send_to(peer, header.clone(), Payload::empty())?;
        }
        for peer in self.peers() {
            self.recv_from(peer, OpCode::Barrier, Some(&header))?;
        }
        Ok(())
    }

    fn send_recv_start(
        &self,
        sends: &[(Rank, Tensor)],
        recvs: &[(Rank, Vec<usize>, DType)],
    ) -> Result<Box<dyn PendingRecv>> {
        for (peer, xs) in sends {
            self.send(xs, *peer)?;
        }
        if recvs.is_empty() {
            return Ok(Box::new(Received(Vec::new())));
        }
        for (peer, _, _) in recvs {
            self.check_member(*peer, "recv")?;
        }
        // The helper thread drains the peers' streams while the caller computes (a peer's writer
        // would otherwise stall once this rank's socket buffer is full).
        let (comm, recvs) = (self.clone(), recvs.to_vec());
        let thread = std::thread::Builder::new()
            .name("comm-recv".into())
            .spawn(move || recvs.iter().map(|(peer, shape, dtype)| comm.recv(*peer, shape, *dtype)).collect())
            .map_err(|e| candle_core::Error::Msg(format!("cannot start a receive thread: {e}")))?;
        Ok(Box::new(RecvThread(thread)))
    }

    fn abort(&self) {
        self.poison_all();
    }

    fn duplicate(&self) -> Result<Option<Arc<dyn Collective>>> {
        let lane = self.lane + 1;
        let Some(transport) = self.lanes.get(lane) else { return Ok(None) };
        Ok(Some(Arc::new(MeshComm { transport: transport.clone(), lane, ..self.clone() })))
    }

    fn sub_group(&self, ranks: &[Rank]) -> Result<Arc<dyn Collective>> {
        let me = check_sub_group(ranks, self.members.len(), Rank(self.me))?;
        let members: Vec<usize> = ranks.iter().map(|r| self.members[r.0]).collect();
        Ok(Arc::new(MeshComm {
            transport: self.transport.clone(),
            lanes: self.lanes.clone(),
            lane: self.lane,
            group: group_tag(&members),
            members: Arc::new(members),
            me,
            device: self.device.clone(),
        }))
    }
}

/// Receives running on a helper thread ([`MeshComm::send_recv_start`]).
struct RecvThread(std::thread::JoinHandle<Result<Vec<Tensor>>>);

impl PendingRecv for RecvThread {
    fn wait(self: Box<Self>) -> Result<Vec<Tensor>> {
        self.0.join().map_err(|_| candle_core::Error::Msg("the receive thread panicked".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_once() {
        for numel in [0, 1, 3, 7, 64, 1001] {
            for n in 1..6 {
                let ranges: Vec<_> = (0..n).map(|i| chunk_range(numel, n, i)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, numel);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
    }

    #[test]
    fn group_tags_differ_by_membership_and_order() {
        assert_ne!(group_tag(&[0, 1]), group_tag(&[1, 0]));
        assert_ne!(group_tag(&[0, 1]), group_tag(&[0, 1, 2]));
        assert_eq!(group_tag(&[2, 3]), group_tag(&[2, 3]));
    }
}
