//! The LocalSocket backend: CPU worker processes joined by a full mesh of Unix-socket streams, one per
//! pair of ranks, carrying [`Frame`]s as `[u32 header len][postcard header][raw payload]`.
//!
//! Setup: every rank binds `data-{rank}.sock` in the world's rendezvous directory *before* it reports
//! to the supervisor, so that once all ranks have reported, rank `i` can connect to every `j < i` and
//! accept from every `j > i`, [`super::LANES`] streams per pair (independent lanes, see `MeshComm`).
//! Each stream has a writer thread fed by a bounded queue (sends never wait on this rank's own reads:
//! no deadlock when two ranks send to each other) and read/write timeouts that turn a stuck peer
//! into an error naming it. A closed stream (dead peer) fails immediately.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::mesh::{MeshComm, Transport};
use super::wire::{Frame, FrameHeader, Payload};
use super::CommError;
use crate::parallel::Rank;

/// Frames that may be queued per peer before `send` blocks (bounds memory held for slow peers).
const QUEUE_FRAMES: usize = 4;
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"TSDP");
/// Magic, rank, world size, lane: four little-endian u32.
const HELLO_BYTES: usize = 16;
/// Headers are a few dozen bytes; anything larger is corruption.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Unix socket paths are limited to 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Timeouts of the data plane.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    /// How long to wait for all peers to connect.
    pub connect_timeout: Duration,
    /// How long a single read or write may make no progress before the peer is declared stuck. A
    /// dead peer is detected at once (closed stream); this only bounds a live but hung one, so it
    /// must exceed the longest compute phase between two collectives.
    pub io_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), io_timeout: Duration::from_secs(300) }
    }
}

/// A rank's bound data-plane socket, waiting for the mesh to be formed.
#[derive(Debug)]
pub struct SocketListener {
    listener: UnixListener,
    path: PathBuf,
    dir: PathBuf,
    rank: usize,
    world_size: usize,
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        // Peers connect only during setup; the file is not needed afterwards.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SocketListener {
    pub fn socket_path(dir: &Path, rank: Rank) -> PathBuf {
        dir.join(format!("data-{}.sock", rank.0))
    }

    /// Binds this rank's socket in the world's rendezvous directory.
    pub fn bind(dir: &Path, rank: Rank, world_size: usize) -> Result<Self, CommError> {
        if rank.0 >= world_size {
            return Err(CommError::Setup(format!("rank {rank} out of range for world size {world_size}")));
        }
        let path = Self::socket_path(dir, rank);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(CommError::Setup(format!(
                "socket path longer than {MAX_SOCKET_PATH} bytes (use a shorter TMPDIR): {}",
                path.display()
            )));
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| CommError::Setup(format!("cannot bind data socket ({e}): {}", path.display())))?;
        Ok(Self { listener, path, dir: dir.to_path_buf(), rank: rank.0, world_size })
    }

    /// Connects to every lower rank, accepts every higher rank, and returns the world communicator:
    /// [`super::LANES`] streams per pair of ranks (one transport per lane, see [`MeshComm`]).
    pub fn connect_mesh(self, opts: &SocketOptions) -> Result<MeshComm, CommError> {
        let deadline = Instant::now() + opts.connect_timeout;
        let mut streams: Vec<Vec<Option<UnixStream>>> =
            (0..super::LANES).map(|_| (0..self.world_size).map(|_| None).collect()).collect();
        for (lane, lane_streams) in streams.iter_mut().enumerate() {
            for (peer, slot) in lane_streams.iter_mut().enumerate().take(self.rank) {
                *slot = Some(self.connect_to(peer, lane, deadline, opts.connect_timeout)?);
            }
        }
        self.accept_higher(&mut streams, deadline, opts.connect_timeout)?;
        let mut lanes: Vec<Arc<dyn Transport>> = Vec::with_capacity(super::LANES);
        for lane_streams in streams {
            lanes.push(Arc::new(SocketTransport::new(self.rank, lane_streams, opts.io_timeout)?));
        }
        Ok(MeshComm::world(lanes))
    }

    fn connect_to(
        &self,
        peer: usize,
        lane: usize,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<UnixStream, CommError> {
        let path = Self::socket_path(&self.dir, Rank(peer));
        loop {
            match UnixStream::connect(&path) {
                Ok(mut stream) => {
                    let mut hello = Vec::with_capacity(HELLO_BYTES);
                    for v in [HELLO_MAGIC, self.rank as u32, self.world_size as u32, lane as u32] {
                        hello.extend_from_slice(&v.to_le_bytes());
                    }
                    stream.write_all(&hello).map_err(|source| CommError::Io { peer, source })?;
                    return Ok(stream);
                }
                // The peer may not have bound yet (only possible if setup order is changed): retry.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                    if Instant::now() >= deadline {
                        return Err(CommError::SetupTimeout { rank: self.rank, missing: vec![peer], after: timeout });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => return Err(CommError::Io { peer, source }),
            }
        }
    }

    fn accept_higher(
        &self,
        streams: &mut [Vec<Option<UnixStream>>],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), CommError> {
        let setup_err = |e: std::io::Error| CommError::Setup(format!("accept on {}: {e}", self.path.display()));
        self.listener.set_nonblocking(true).map_err(setup_err)?;
        // A peer is missing until all of its lanes are connected.
        let missing = |streams: &[Vec<Option<UnixStream>>]| -> Vec<usize> {
            (self.rank + 1..self.world_size).filter(|&r| streams.iter().any(|lane| lane[r].is_none())).collect()
        };
        while !missing(streams).is_empty() {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).map_err(setup_err)?;
                    stream.set_read_timeout(Some(timeout)).map_err(setup_err)?;
                    let mut hello = [0u8; HELLO_BYTES];
                    stream.read_exact(&mut hello).map_err(setup_err)?;
                    let word = |i: usize| u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]]);
                    let (magic, peer, world, lane) = (word(0), word(4) as usize, word(8) as usize, word(12) as usize);
                    let bad = magic != HELLO_MAGIC || world != self.world_size || peer <= self.rank || peer >= world;
                    if bad || lane >= streams.len() || streams[lane][peer].is_some() {
                        return Err(CommError::Setup(format!(
                            "unexpected data-plane hello (rank {peer}, world {world}, lane {lane}) at rank {}",
                            self.rank
                        )));
                    }
                    streams[lane][peer] = Some(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(CommError::SetupTimeout {
                            rank: self.rank,
                            missing: missing(streams),
                            after: timeout,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(setup_err(e)),
            }
        }
        Ok(())
    }
}

struct PeerLink {
    reader: Mutex<BufReader<UnixStream>>,
    queue: Option<SyncSender<Frame>>,
    writer: Option<JoinHandle<()>>,
    /// First write failure, reported by later sends.
    write_error: Arc<Mutex<Option<String>>>,
    /// A handle used only to shut the socket down (unblocks reader and writer).
    control: UnixStream,
}

struct SocketTransport {
    rank: usize,
    peers: Vec<Option<PeerLink>>,
    io_timeout: Duration,
}

impl std::fmt::Debug for SocketTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SocketTransport(rank {} of {})", self.rank, self.peers.len())
    }
}

impl Drop for SocketTransport {
    fn drop(&mut self) {
        // Close the queues so the writers flush what is queued and exit, then wait for them.
        for link in self.peers.iter_mut().flatten() {
            link.queue.take();
        }
        for link in self.peers.iter_mut().flatten() {
            if let Some(writer) = link.writer.take() {
                let _ = writer.join();
            }
        }
    }
}

fn write_frame(stream: &mut UnixStream, frame: &Frame) -> std::io::Result<()> {
    let header = postcard::to_stdvec(&frame.header).map_err(std::io::Error::other)?;
    stream.write_all(&(header.len() as u32).to_le_bytes())?;
    stream.write_all(&header)?;
    stream.write_all(frame.payload.as_slice())
}

fn read_frame(reader: &mut impl Read, peer: usize, io_timeout: Duration) -> Result<Frame, CommError> {
    let map = |e: std::io::Error| match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => CommError::PeerClosed { peer },
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            CommError::Timeout { peer, what: "data frame", after: io_timeout }
        }
        _ => CommError::Io { peer, source: e },
    };
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).map_err(map)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(CommError::Protocol { peer, detail: format!("frame header of {len} bytes") });
    }
    let mut header = vec![0u8; len];
    reader.read_exact(&mut header).map_err(map)?;
    let header: FrameHeader =
        postcard::from_bytes(&header).map_err(|e| CommError::Protocol { peer, detail: e.to_string() })?;
    let mut payload = vec![0u8; header.payload_len()];
    reader.read_exact(&mut payload).map_err(map)?;
    Ok(Frame { header, payload: Payload::whole(Arc::new(payload)) })
}

impl SocketTransport {
    fn new(rank: usize, streams: Vec<Option<UnixStream>>, io_timeout: Duration) -> Result<Self, CommError> {
        let mut peers = Vec::with_capacity(streams.len());
        for (peer, stream) in streams.into_iter().enumerate() {
            let Some(stream) = stream else {
                peers.push(None);
                continue;
            };
            let io = |source| CommError::Io { peer, source };
            stream.set_read_timeout(Some(io_timeout)).map_err(io)?;
            stream.set_write_timeout(Some(io_timeout)).map_err(io)?;
            let mut write_half = stream.try_clone().map_err(io)?;
            let control = stream.try_clone().map_err(io)?;
            let (tx, rx) = sync_channel::<Frame>(QUEUE_FRAMES);
            let write_error = Arc::new(Mutex::new(None));
            let error_slot = write_error.clone();
            let writer = std::thread::Builder::new()
                .name(format!("comm-writer-{peer}"))
                .spawn(move || {
                    for frame in rx {
                        let failed = error_slot.lock().map(|e| e.is_some()).unwrap_or(true);
                        if failed {
                            continue; // drain: the sender learns about the failure on its next send
                        }
                        if let Err(e) = write_frame(&mut write_half, &frame) {
                            if let Ok(mut slot) = error_slot.lock() {
                                *slot = Some(e.to_string());
                            }
                            let _ = write_half.shutdown(Shutdown::Both);
                        }
                    }
                })
                .map_err(io)?;
            peers.push(Some(PeerLink {
                reader: Mutex::new(BufReader::with_capacity(64 * 1024, stream)),
                queue: Some(tx),
                writer: Some(writer),
                write_error,
                control,
            }));
        }
        Ok(Self { rank, peers, io_timeout })
    }

    fn link(&self, peer: usize) -> Result<&PeerLink, CommError> {
        self.peers
            .get(peer)
            .and_then(Option::as_ref)
            .ok_or_else(|| CommError::Setup(format!("rank {} has no stream to rank {peer}", self.rank)))
    }
}

impl Transport for SocketTransport {
    fn world_size(&self) -> usize {
        self.peers.len()
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn send(&self, peer: usize, frame: Frame) -> Result<(), CommError> {
        let link = self.link(peer)?;
        let failure = link.write_error.lock().ok().and_then(|e| e.clone());
        if let Some(msg) = failure {
            return Err(CommError::Io { peer, source: std::io::Error::other(msg) });
        }
        let queue = link.queue.as_ref().ok_or(CommError::PeerClosed { peer })?;
        queue.send(frame).map_err(|_| CommError::PeerClosed { peer })
    }

    fn recv(&self, peer: usize) -> Result<Frame, CommError> {
        let link = self.link(peer)?;
        let mut reader = link.reader.lock().map_err(|_| CommError::Setup("reader lock poisoned".into()))?;
        read_frame(&mut *reader, peer, self.io_timeout)
    }

    fn poison(&self) {
        for link in self.peers.iter().flatten() {
            let _ = link.control.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::parallel::comm::Collective;

    fn unique_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tsr-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn socket_world(dir: &Path, n: usize, opts: SocketOptions) -> Vec<Result<MeshComm, CommError>> {
        let listeners: Vec<_> = (0..n).map(|r| SocketListener::bind(dir, Rank(r), n).unwrap()).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = listeners.into_iter().map(|l| s.spawn(move || l.connect_mesh(&opts))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn mesh_exchanges_large_tensors_both_ways_without_deadlock() {
        let dir = unique_dir("mesh");
        let comms = socket_world(&dir, 3, SocketOptions::default());
        // 8 MiB per rank: far beyond socket buffers, so a send-then-receive without writer threads
        // would deadlock here.
        let n = 2 * 1024 * 1024;
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|comm| {
                    s.spawn(move || {
                        let comm = comm.unwrap();
                        let xs = Tensor::full(comm.rank().0 as f32 + 1.0, n, &Device::Cpu).unwrap();
                        let ys = comm.all_gather(&xs, 0).unwrap();
                        ys.narrow(0, 0, 1)
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                            .into_iter()
                            .chain(ys.narrow(0, 2 * n, 1).unwrap().to_vec1::<f32>().unwrap())
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert_eq!(r, vec![1.0, 3.0]);
        }
        // The listeners removed their socket files.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The second lane ([`Collective::duplicate`]) runs ops at the same time as the first, from
    /// another thread, without their frames mixing (a sub-group's duplicate too).
    #[test]
    fn two_lanes_run_concurrently() {
        let dir = unique_dir("lanes");
        let comms = socket_world(&dir, 3, SocketOptions::default());
        std::thread::scope(|s| {
            for comm in comms {
                s.spawn(move || {
                    let world: Arc<dyn Collective> = Arc::new(comm.unwrap());
                    let r = world.rank().0;
                    let pair = if r < 2 { Some(world.sub_group(&[Rank(0), Rank(1)]).unwrap()) } else { None };
                    let second = world.duplicate().unwrap().expect("the socket mesh has a second lane");
                    assert_eq!((second.rank(), second.world_size()), (world.rank(), 3));
                    // A duplicate of a duplicate has no third lane.
                    assert!(second.duplicate().unwrap().is_none());
                    let pair_second = pair.as_ref().map(|p| p.duplicate().unwrap().unwrap());
                    std::thread::scope(|inner| {
                        let bg = inner.spawn(|| {
                            for i in 0..50 {
                                let xs = Tensor::full((r * 100 + i) as f32, 1000, &Device::Cpu).unwrap();
                                let ys = second.all_gather(&xs, 0).unwrap().to_vec1::<f32>().unwrap();
                                for p in 0..3 {
                                    assert_eq!(ys[p * 1000], (p * 100 + i) as f32);
                                }
                                if let Some(ps) = &pair_second {
                                    let got = ps.all_reduce_sum(&xs).unwrap().to_vec1::<f32>().unwrap();
                                    assert_eq!(got[0], (100 + 2 * i) as f32);
                                }
                            }
                        });
                        for i in 0..50 {
                            let xs = Tensor::full(-((r * 10 + i) as f32), 3000, &Device::Cpu).unwrap();
                            let ys = world.all_gather(&xs, 0).unwrap().to_vec1::<f32>().unwrap();
                            for p in 0..3 {
                                assert_eq!(ys[p * 3000], -((p * 10 + i) as f32));
                            }
                            if let Some(pair) = &pair {
                                pair.barrier().unwrap();
                            }
                        }
                        bg.join().unwrap();
                    });
                });
            }
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_rank_is_named_in_setup_timeout() {
        let dir = unique_dir("missing");
        let opts = SocketOptions { connect_timeout: Duration::from_millis(300), ..Default::default() };
        // Rank 2 binds but never joins: rank 0 and 1 must name it.
        let l0 = SocketListener::bind(&dir, Rank(0), 3).unwrap();
        let l1 = SocketListener::bind(&dir, Rank(1), 3).unwrap();
        let _l2 = SocketListener::bind(&dir, Rank(2), 3).unwrap();
        let (r0, r1) = std::thread::scope(|s| {
            let a = s.spawn(move || l0.connect_mesh(&opts));
            let b = s.spawn(move || l1.connect_mesh(&opts));
            (a.join().unwrap(), b.join().unwrap())
        });
        for (r, err) in [(0, r0.unwrap_err()), (1, r1.unwrap_err())] {
            let msg = err.to_string();
            assert!(msg.contains("rank [2] did not connect") && msg.contains(&format!("rank {r}")), "{msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dead_peer_fails_recv_immediately_naming_it() {
        let dir = unique_dir("dead");
        let mut comms = socket_world(&dir, 2, SocketOptions::default());
        let c1 = comms.pop().unwrap().unwrap();
        let c0 = comms.pop().unwrap().unwrap();
        drop(c1);
        let start = Instant::now();
        let err = c0.recv(Rank(1), &[4], candle_core::DType::F32).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(err.contains("rank 1 closed its connection"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
