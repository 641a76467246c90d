//! The control plane: typed messages between the supervisor and each worker, as length-prefixed
//! postcard frames (`[u32 LE length][postcard bytes]`) over a Unix socket.
//!
//! [`Job`] is the extension point for new work: add a variant here, and an arm in
//! `runtime::jobs::run` that calls the model code.

use std::io::{ErrorKind, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::parallel::comm::check::{CheckSpec, CollectiveOp};
use crate::parallel::comm::wire::WireDType;
use crate::parallel::plan::VaeMode;
use crate::parallel::Rank;

/// Bumped on every incompatible change of the messages below; checked in the handshake.
pub const PROTOCOL_VERSION: u32 = 6;
/// Control frames carry small outputs at most (test tensors, bench tables); larger is corruption.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// The device a worker drives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub ordinal: usize,
    /// e.g. "cpu" or "NVIDIA H100 80GB HBM3".
    pub name: String,
    pub mem_total_bytes: u64,
}

impl DeviceInfo {
    /// `cpu` or `cuda:N`, as written in reports.
    pub fn label(&self) -> String {
        match self.kind {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda => format!("cuda:{}", self.ordinal),
        }
    }
}

/// Supervisor → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Sent once every rank said `Hello`: form the data plane (NCCL id from rank 0 when on CUDA).
    Init {
        protocol_version: u32,
        world_size: usize,
        nccl_id: Option<Vec<u8>>,
    },
    Run {
        job_id: JobId,
        job: Job,
    },
    Cancel {
        job_id: JobId,
    },
    Shutdown,
}

/// Worker → supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Hello {
        rank: Rank,
        protocol_version: u32,
        pid: u32,
        device: DeviceInfo,
        nccl_id: Option<Vec<u8>>,
    },
    /// The data plane is up; the worker is idle.
    Ready {
        rank: Rank,
    },
    Event {
        job_id: JobId,
        event: WorkerEvent,
    },
    Done {
        job_id: JobId,
        output: JobOutput,
        summary: RankSummary,
    },
    /// The job (or, with `job_id: None`, the worker setup) failed; the message is for humans.
    Failed {
        job_id: Option<JobId>,
        message: String,
    },
    Cancelled {
        job_id: JobId,
    },
}

/// Streamed while a job runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkerEvent {
    Progress {
        step: u64,
        total: u64,
        message: String,
    },
    Memory(MemorySample),
    PhaseSpan(PhaseSpan),
    Log {
        level: LogLevel,
        message: String,
    },
    /// A finished VAE tile (tiles mode) or chunk slab (halo mode), for the live decode mosaic.
    VaePiece(VaePiece),
    /// The x0 estimate of a denoise step as a small RGB picture (rank 0, every k-th step).
    DenoisePreview(DenoisePreview),
    /// A job's result data (video frames, latents, embeddings), sent by the rank that holds it over
    /// the control channel instead of through a file. The supervisor collects it into the
    /// `JobResult`; it is not an event for the UI.
    Data(JobData),
}

/// Result data a job sends back while it runs (see [`WorkerEvent::Data`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobData {
    /// Final normalised latents `(1, z, T, h, w)` f32, sent before the decode starts.
    Latents(WireTensor),
    /// Decoded frames `[first, first + n)` of `total`, as `(n, 3, H, W)` f32 in [0, 1]. Chunked so
    /// no control frame nears its size limit, whatever the video length.
    VideoFrames { first: usize, total: usize, frames: WireTensor },
    /// A named tensor (e.g. `prompt_embeds`), f32.
    Tensor { name: String, tensor: WireTensor },
}

/// One finished piece of a patch-parallel VAE decode/encode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaePiece {
    pub mode: VaeMode,
    /// Tile index in the row-major tile plan (tiles mode) or slab index = VAE rank (halo mode).
    pub index: usize,
    /// Latent chunk (halo mode: one event per chunk); `None` for a whole tile over all frames.
    pub latent_chunk: Option<usize>,
    /// Output frames the piece covers, `[start, end)`.
    pub frames: [usize; 2],
    /// The output pixels this piece finally owns after blending/cropping: `[y, x, height, width]`.
    pub pixel_rect: [usize; 4],
    /// The latent rows/columns it was decoded from (with overlap/halo): `[y, x, height, width]`.
    pub latent_rect: [usize; 4],
    /// Decode compute time of the piece on its rank.
    pub seconds: f64,
    /// Bytes this piece caused its rank to send (halos, blend strips, the piece itself).
    pub bytes_sent: u64,
    /// Halo mode: of `seconds`, the time the rank was blocked on halo exchanges (0 in tiles mode).
    pub halo_wait_seconds: f64,
    /// Small preview of the piece's first frame (longest side ≤ 64 px).
    pub preview: Rgb8Preview,
}

/// A live preview of the denoise: the x0 estimate after step `step` (1-based) of `total`,
/// projected latent→RGB (`pipeline::preview`), at most 256 px on its long side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenoisePreview {
    pub step: usize,
    pub total: usize,
    pub preview: Rgb8Preview,
}

/// A small RGB8 image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rgb8Preview {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// One telemetry sample (~10 Hz while a job runs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Seconds since the job started on this rank.
    pub elapsed_secs: f64,
    /// Heap bytes live now / at most so far in this job (counting allocator; 0 if not installed).
    pub heap_live_bytes: u64,
    pub heap_peak_bytes: u64,
    /// Resident set size of the worker process.
    pub rss_bytes: u64,
    /// CUDA workers: device memory in use / total (whole device, `cuMemGetInfo`).
    pub device_used_bytes: Option<u64>,
    pub device_total_bytes: Option<u64>,
    /// CUDA workers: the job's device peak so far, from the memory pool's high-water mark.
    pub device_peak_bytes: Option<u64>,
}

/// A named, timed part of a job (e.g. "load", "decode").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseSpan {
    pub name: String,
    /// Seconds from the job start to the phase start, on this rank.
    pub start_secs: f64,
    pub seconds: f64,
    /// Peak of the rank's tracked memory during the phase (heap on CPU, device on CUDA).
    pub peak_bytes: u64,
    /// Tracked memory live when the phase began (so `peak − start` is what the phase added).
    pub start_bytes: u64,
}

/// Per-rank totals sent with `Done`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankSummary {
    pub seconds: f64,
    /// Heap peak on CPU; device-used peak on CUDA.
    pub peak_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Bytes of weights the job loaded (0 for jobs without a model).
    pub weights_bytes: u64,
}

/// Work for every rank of the world. All ranks run the same job (replication); jobs that shard use
/// the world's `Collective`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Job {
    /// Answers `Pong` from every rank; checks the control plane.
    Ping,
    /// Runs one collective on deterministic inputs and returns each rank's output (tests, doctor).
    CommCheck(CheckSpec),
    /// Times collectives at several payload sizes (`tessera bench comm`); rank 0 returns the table.
    CommBench(BenchSpec),
    /// Fault injection and waiting, to test supervision. Never used by real pipelines.
    Diagnostic(Diagnostic),
    /// `tessera vae decode` across the world (see `jobs::vae`).
    VaeDecode(VaeDecodeSpec),
    /// `tessera vae encode` across the world.
    VaeEncode(VaeEncodeSpec),
    /// UMT5 prompt embeddings with the encoder split by layer over the world (`--text-encoder-on sharded`).
    EncodePrompt(EncodePromptSpec),
    /// `tessera generate` across the world: load, sharded denoise, VAE decode (see `jobs::generate`).
    Generate(Box<GenerateSpec>),
}

/// A whole generation on the workers. Every rank reads the model folder itself (FSDP ranks read
/// only their slices). Rank 0 sends the final latents and the decoded frames back as
/// [`JobData`]; the host writes any output file, so a failed run never touches it.
///
/// The prompt embeddings come ready-made and inline (the host's text encoder, this world's sharded
/// one in an `EncodePrompt` job just before, or a file the host read and checked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateSpec {
    /// Diffusers pipeline folder (model_index.json, transformer/, transformer_2/?, vae/, scheduler/),
    /// a folder of single files, or empty with `files.transformer`.
    pub model: std::path::PathBuf,
    /// Component files, config and LoRAs (`ModelSpec::open`).
    pub files: crate::model_spec::ModelFiles,
    pub params: crate::pipeline::GenerateParams,
    /// Validated again on the workers against the model.
    pub plan: crate::parallel::plan::ParallelPlan,
    /// `(1, L, text_dim)` prompt embeddings, f32 (resolved and checked by the host).
    pub prompt: WireTensor,
    /// Negative prompt embeddings; required when `params.guidance > 1`.
    pub negative: Option<WireTensor>,
    /// HunyuanVideo 1.5: the ByT5 glyph embeddings `(1, M, glyph_dim)` of the prompt and of the
    /// negative (valid rows only; `None`: no quoted text). Wan: `None`.
    pub prompt_2: Option<WireTensor>,
    pub negative_2: Option<WireTensor>,
    /// PNG/JPEG for image-to-video (rank 0 encodes it and broadcasts the latent condition).
    pub image: Option<std::path::PathBuf>,
    /// Initial noise `(1, z, T, h, w)` f32; else seeded noise from `params.seed`.
    pub latents: Option<WireTensor>,
    /// `false`: skip the VAE (only the latents come back), for denoise benchmarks.
    pub decode: bool,
    /// Keep the weights loaded after the job (the next job with the same model and plan reuses
    /// them); `false` frees the transformer before the decode.
    pub keep_weights: bool,
    /// Rank 0 sends a [`DenoisePreview`] every this many steps; `None`: none.
    pub preview_every: Option<usize>,
}

/// What a rank measured during a `Generate` job (`--report`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateStats {
    /// Resident transformer weights (stem + blocks or block slices) plus the VAE if this rank has it.
    pub weights_bytes: u64,
    /// Transformer weights alone, and one block's full weights (what FSDP gathers at a time).
    pub transformer_bytes: u64,
    pub block_bytes: u64,
    /// The weights were still loaded from the previous job (no checkpoint read).
    pub weights_reused: bool,
    /// Wall time of each denoising step and the part of it spent inside collectives.
    pub step_seconds: Vec<f64>,
    pub step_comm_seconds: Vec<f64>,
    /// Collectives over the whole job: time, calls and payload bytes this rank contributed.
    pub comm_seconds: f64,
    pub comm_calls: u64,
    pub comm_bytes: u64,
    /// The expert of each step (1: the only or high-noise one, 2: the low-noise one).
    pub step_experts: Vec<u8>,
    /// Bytes of expert weights this rank read at the boundary step (phased residency), else 0.
    pub switched_bytes: u64,
    /// FSDP: whether the next block was gathered during the current one (a second communicator),
    /// and the seconds the denoise was blocked on gathers (the experts loaded at the end). With
    /// prefetch the gathers are not in `step_comm_seconds` (they run beside the compute); the
    /// blocked time is here.
    pub fsdp_prefetch: bool,
    pub fsdp_wait_seconds: f64,
}

/// A VAE decode job: the VAE ranks read the same files; rank 0 writes `out` (tensor `video`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeDecodeSpec {
    /// Pipeline folder, its `vae/` folder, or a VAE file.
    pub model: std::path::PathBuf,
    /// `config.json` for a VAE file whose latent statistics are not the published ones.
    pub config: Option<std::path::PathBuf>,
    /// Safetensors file holding tensor `latents` [B, C, T, H, W].
    pub latents: std::path::PathBuf,
    pub out: std::path::PathBuf,
    pub mode: VaeMode,
    /// Tiles mode: diffusers' `enable_tiling` (TH, TW, SH, SW in sample pixels); `None` = its defaults.
    /// Must be `None` in halo mode.
    pub tiling: Option<[usize; 4]>,
    /// Ranks `0..n` take part (the rest idle); `None` = the whole world.
    pub vae_parallel: Option<usize>,
}

/// A VAE encode job: every VAE rank ends with the moments; rank 0 writes `out` (`mean`, `logvar`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeEncodeSpec {
    pub model: std::path::PathBuf,
    /// `config.json` for a VAE file whose latent statistics are not the published ones.
    pub config: Option<std::path::PathBuf>,
    /// Safetensors file with tensor `video` [B, 3, F, H, W] in [-1, 1], or a PNG/JPEG image.
    pub video: std::path::PathBuf,
    pub out: std::path::PathBuf,
    pub mode: VaeMode,
    pub tiling: Option<[usize; 4]>,
    pub vae_parallel: Option<usize>,
}

/// A sharded text-encoder job: every rank ends with the embeddings; rank 0 sends them back as
/// [`JobData::Tensor`] named `prompt_embeds` (the first prompt) and `negative_prompt_embeds` (the
/// second, if any).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncodePromptSpec {
    pub encoder: PromptEncoder,
    /// The encoder and its tokenizer (UMT5: folders or single files; Qwen2.5-VL: folders).
    pub text: crate::model_spec::TextModel,
    pub prompts: Vec<String>,
    /// UMT5: the padded length; HunyuanVideo 1.5: the prompt tokens kept after the crop.
    pub max_sequence_length: usize,
}

/// Which prompt encoder a text job splits over the world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptEncoder {
    /// Wan's UMT5 (`text::sharded`), with the prompt-embedding cache folder rank 0 consults and
    /// fills (`None`: no cache).
    Umt5 { cache_dir: Option<std::path::PathBuf> },
    /// HunyuanVideo 1.5's MLLM prompt, Qwen2.5-VL (`text::hv15_sharded`): the session consults and
    /// fills the cache around the job (the host path shares that code), so the job has none.
    Hv15Mllm,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchSpec {
    pub ops: Vec<CollectiveOp>,
    /// Payload per rank, in bytes (rounded down to whole elements of `dtype`).
    pub sizes_bytes: Vec<u64>,
    pub dtype: WireDType,
    pub iters: u32,
    pub warmup: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Diagnostic {
    /// Sleeps, checking for cancellation (collectively) every 20 ms.
    Sleep { ms: u64 },
    /// `rank` (or every rank when `None`) exits the process with `code` mid-job.
    Exit { rank: Option<Rank>, code: i32 },
    /// `rank` aborts (SIGABRT) mid-job.
    Abort { rank: Rank },
    /// `rank` panics inside the job; the worker must report it as `Failed`.
    Panic { rank: Rank },
    /// `rank` returns an error from the job.
    Fail { rank: Rank, message: String },
}

/// A tensor in a control message: check results, embeddings, latents, chunks of video frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireTensor {
    pub dtype: WireDType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl WireTensor {
    /// Copies `t` (any device, kept in its dtype) into a message.
    pub fn from_tensor(t: &candle_core::Tensor) -> candle_core::Result<Self> {
        let t = t.to_device(&candle_core::Device::Cpu)?;
        Ok(Self {
            dtype: WireDType::from_dtype(t.dtype())?,
            shape: t.dims().to_vec(),
            bytes: crate::parallel::comm::wire::tensor_to_bytes(&t)?,
        })
    }

    /// The tensor on `device`.
    pub fn to_tensor(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        crate::parallel::comm::wire::tensor_from_bytes(&self.bytes, self.dtype, &self.shape, device)
    }
}

/// One row of `tessera bench comm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    pub op: String,
    /// Payload per rank.
    pub bytes: u64,
    pub iters: u32,
    /// Mean and best time per op, the slowest rank's view.
    pub mean_secs: f64,
    pub min_secs: f64,
    /// Payload bytes / time.
    pub algbw_gbps: f64,
    /// Bus bandwidth, NCCL-tests convention (corrects algbw for the op's traffic pattern).
    pub busbw_gbps: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum JobOutput {
    #[default]
    None,
    Pong {
        rank: Rank,
        pid: u32,
    },
    /// `None` when this rank was not in the checked sub-group.
    Tensor(Option<WireTensor>),
    Bench(Vec<BenchRow>),
    Generate(GenerateStats),
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("timed out waiting for a message")]
    Timeout,
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Self::Closed,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Io(e),
        }
    }
}

/// Writes one frame. Serialises fully before writing, so a frame is never half-written by us.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ProtocolError> {
    let body = postcard::to_stdvec(msg)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame.
pub fn read_msg<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, ProtocolError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::comm::ReduceOp;

    #[test]
    fn messages_round_trip() {
        let msgs = vec![
            ToWorker::Init { protocol_version: PROTOCOL_VERSION, world_size: 3, nccl_id: Some(vec![1, 2, 3]) },
            ToWorker::Run {
                job_id: JobId(7),
                job: Job::CommCheck(CheckSpec {
                    op: CollectiveOp::AllReduce(ReduceOp::Max),
                    dtype: WireDType::BF16,
                    shape: vec![2, 3],
                    group: Some(vec![0, 2]),
                    seed: 9,
                }),
            },
            ToWorker::Run {
                job_id: JobId(8),
                job: Job::Diagnostic(Diagnostic::Fail { rank: Rank(1), message: "x".into() }),
            },
            ToWorker::Cancel { job_id: JobId(7) },
            ToWorker::Shutdown,
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_msg(&mut buf, m).unwrap();
        }
        let mut r = buf.as_slice();
        for m in &msgs {
            assert_eq!(&read_msg::<ToWorker>(&mut r).unwrap(), m);
        }
        assert!(matches!(read_msg::<ToWorker>(&mut r), Err(ProtocolError::Closed)));

        let reply = FromWorker::Done {
            job_id: JobId(7),
            output: JobOutput::Tensor(Some(WireTensor { dtype: WireDType::U8, shape: vec![2], bytes: vec![4, 5] })),
            summary: RankSummary { seconds: 0.5, peak_bytes: 10, peak_rss_bytes: 20, weights_bytes: 0 },
        };
        let mut buf = Vec::new();
        write_msg(&mut buf, &reply).unwrap();
        assert_eq!(read_msg::<FromWorker>(&mut buf.as_slice()).unwrap(), reply);
    }

    #[test]
    fn oversized_length_is_rejected() {
        let buf = (u32::MAX).to_le_bytes();
        assert!(matches!(read_msg::<ToWorker>(&mut buf.as_slice()), Err(ProtocolError::TooLarge(_))));
    }
}
