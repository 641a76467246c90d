//! `ThreadComm`: ranks as threads of one process, over bounded channels. Same algorithms as the
//! socket backend ([`MeshComm`]); used by equivalence tests (sharded == unsharded) that must be fast.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::mesh::{MeshComm, Transport};
use super::wire::Frame;
use super::{Collective, CommError};

/// Frames that may be queued per ordered pair before `send` blocks.
const QUEUE_FRAMES: usize = 4;

struct ThreadTransport {
    rank: usize,
    world_size: usize,
    /// `to[peer]`: queue into `peer`'s inbox from this rank.
    to: Vec<Option<SyncSender<Frame>>>,
    /// `from[peer]`: frames `peer` sent to this rank.
    from: Vec<Option<Mutex<Receiver<Frame>>>>,
    timeout: Duration,
}

impl std::fmt::Debug for ThreadTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadTransport(rank {} of {})", self.rank, self.world_size)
    }
}

impl Transport for ThreadTransport {
    fn world_size(&self) -> usize {
        self.world_size
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn send(&self, peer: usize, frame: Frame) -> Result<(), CommError> {
        let tx = self.to[peer].as_ref().ok_or(CommError::Setup(format!("rank {} has no link to itself", peer)))?;
        tx.send(frame).map_err(|_| CommError::PeerClosed { peer })
    }

    fn recv(&self, peer: usize) -> Result<Frame, CommError> {
        let rx = self.from[peer].as_ref().ok_or(CommError::Setup(format!("rank {} has no link to itself", peer)))?;
        let rx = rx.lock().map_err(|_| CommError::Setup("receiver lock poisoned".into()))?;
        rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CommError::Timeout { peer, what: "frame", after: self.timeout },
            RecvTimeoutError::Disconnected => CommError::PeerClosed { peer },
        })
    }

    /// Channels cannot be interrupted from outside; a failed thread rank drops its comm, which
    /// disconnects its channels and fails its peers.
    fn poison(&self) {}
}

/// Builder for in-process worlds.
#[derive(Debug, Clone, Copy)]
pub struct ThreadComm;

impl ThreadComm {
    /// One communicator per rank, to be moved onto one thread each. Each world has [`super::LANES`]
    /// independent sets of channels (lanes, see [`MeshComm`]), like the socket mesh.
    pub fn world(world_size: usize, timeout: Duration) -> Vec<MeshComm> {
        let mut lanes: Vec<Vec<Arc<dyn Transport>>> = (0..world_size).map(|_| Vec::new()).collect();
        for _ in 0..super::LANES {
            for (rank, t) in Self::lane(world_size, timeout).into_iter().enumerate() {
                lanes[rank].push(Arc::new(t));
            }
        }
        lanes.into_iter().map(MeshComm::world).collect()
    }

    /// One set of bounded channels between every ordered pair of ranks.
    fn lane(world_size: usize, timeout: Duration) -> Vec<ThreadTransport> {
        let mut to: Vec<Vec<Option<SyncSender<Frame>>>> = (0..world_size).map(|_| Vec::new()).collect();
        let mut from: Vec<Vec<Option<Mutex<Receiver<Frame>>>>> =
            (0..world_size).map(|_| (0..world_size).map(|_| None).collect()).collect();
        for (src, to_src) in to.iter_mut().enumerate() {
            for (dst, from_dst) in from.iter_mut().enumerate() {
                if src == dst {
                    to_src.push(None);
                } else {
                    let (tx, rx) = sync_channel(QUEUE_FRAMES);
                    to_src.push(Some(tx));
                    from_dst[src] = Some(Mutex::new(rx));
                }
            }
        }
        to.into_iter()
            .zip(from)
            .enumerate()
            .map(|(rank, (to, from))| ThreadTransport { rank, world_size, to, from, timeout })
            .collect()
    }

    /// Runs `f` on `world_size` scoped threads, one rank each, and returns the results in rank order.
    pub fn run<T: Send>(
        world_size: usize,
        f: impl Fn(&dyn Collective) -> candle_core::Result<T> + Sync,
    ) -> candle_core::Result<Vec<T>> {
        let comms = Self::world(world_size, Duration::from_secs(30));
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|comm| {
                    let f = &f;
                    s.spawn(move || f(&comm))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(candle_core::Error::Msg("a rank thread panicked".into()))))
                .collect()
        })
    }
}
