//! [`Session`]: a world of worker processes kept between generations. `generate` checks the request,
//! (re)starts the workers when the plan's ranks or device changed or one died while idle, resolves
//! the prompts, runs the whole generation on the workers (a world of one is the same path) and
//! returns the frames, which come back over the control channel — no file in between. Outputs are
//! written by the host, atomically, only after the run succeeded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::error::{explain, SessionError};
use super::prompts::PromptMemory;
use super::report::GenerationReport;
use super::request::GenerationRequest;
use super::settings::Settings;
use super::video::Video;
use crate::fields::Field;
use crate::model_spec::ModelSpec;
use crate::parallel::plan::TextEncoderPlacement;
use crate::pipeline::request::RequestError;
use crate::pipeline::wan::latent_shape;
use crate::runtime::protocol::{DeviceKind, GenerateSpec, Job, JobData, WireTensor};
use crate::runtime::{CancelHandle, CommBackend, JobEvent, Supervisor, WorldSpec};
use crate::tensor_io;

/// How a session starts its workers and caches prompts.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// `None`: `$TESSERA_WORKER_EXE`, else `tessera-worker` beside the current executable.
    pub worker_exe: Option<PathBuf>,
    /// CPU threads per worker; `None`: the cores divided by the ranks.
    pub threads_per_rank: Option<usize>,
    /// Extra environment for the workers.
    pub env: Vec<(String, String)>,
    /// Prompt embeddings cached on disk per (prompt, model); `None`: no disk cache.
    pub prompt_cache_dir: Option<PathBuf>,
    /// The data plane (auto: sockets on CPU, NCCL on CUDA).
    pub comm: CommBackend,
    /// GPU of each rank (rank `r` on `gpus[r % len]`; empty: GPU `r`); see [`crate::runtime::device_ordinals`].
    pub gpus: Vec<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            worker_exe: None,
            threads_per_rank: None,
            env: Vec::new(),
            prompt_cache_dir: crate::text::PromptCache::default_dir(),
            comm: CommBackend::Auto,
            gpus: Vec::new(),
        }
    }
}

/// Prompt embeddings and, when the workers encoded them, the text job's report.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub embeds: Vec<Tensor>,
    pub report: Option<crate::runtime::RunReport>,
}

/// Stops the session's running generation at the next step boundary; usable from any thread.
#[derive(Clone, Default)]
pub struct SessionCancel(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    requested: AtomicBool,
    job: Mutex<Option<CancelHandle>>,
}

impl SessionCancel {
    pub fn cancel(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        if let Ok(job) = self.0.job.lock() {
            if let Some(h) = job.as_ref() {
                h.cancel();
            }
        }
    }

    fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    fn arm(&self, handle: Option<CancelHandle>) {
        if let Ok(mut job) = self.0.job.lock() {
            *job = handle;
        }
    }

    fn reset(&self) {
        self.arm(None);
        self.0.requested.store(false, Ordering::SeqCst);
    }
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// `None` for a denoise-only request.
    pub video: Option<Video>,
    /// Final normalised latents `(1, z, T, h, w)` f32.
    pub latents: Tensor,
    pub report: GenerationReport,
}

struct World {
    supervisor: Supervisor,
    ranks: usize,
    device: DeviceKind,
}

/// A world of workers reused across generations (see the module doc).
pub struct Session {
    options: SessionOptions,
    world: Option<World>,
    prompts: PromptMemory,
    cancel: SessionCancel,
}

impl Session {
    pub fn new(options: SessionOptions) -> Self {
        let prompts = PromptMemory::new(options.prompt_cache_dir.clone());
        Self { options, world: None, prompts, cancel: SessionCancel::default() }
    }

    pub fn cancel_handle(&self) -> SessionCancel {
        self.cancel.clone()
    }

    /// Pids of the running workers, by rank (empty when none run).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.world.as_ref().map(|w| w.supervisor.workers().iter().map(|i| i.pid).collect()).unwrap_or_default()
    }

    /// While idle: whether a worker died since the last run. The world is then stopped (the next
    /// `generate` starts a fresh one) and the message says which rank and how.
    pub fn check_idle(&mut self) -> Option<String> {
        let world = self.world.as_mut()?;
        match world.supervisor.check_idle() {
            Ok(()) => None,
            Err(e) => {
                self.world = None;
                Some(format!("Idle workers stopped: {}", explain(&e)))
            }
        }
    }

    /// Runs `req` and returns its video; `on_event` sees every event of the run as it happens.
    pub fn generate(
        &mut self,
        req: &GenerationRequest,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Generation, SessionError> {
        let result = self.generate_inner(req, on_event);
        self.cancel.reset();
        result
    }

    fn generate_inner(
        &mut self,
        req: &GenerationRequest,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Generation, SessionError> {
        let started = Instant::now();
        let model = ModelSpec::open(&req.model, &req.files)?;
        for line in &model.assumed {
            tracing::info!("assumed: {line}");
        }
        req.validate(&model)?;
        let latents = req.latents.as_ref().map(|p| initial_latents(p, &model, req)).transpose()?;
        let reused = self.prepare_world(req.plan.ranks, req.device, on_event)?;
        self.check_cancel()?;
        let world = self.world.as_mut().ok_or_else(|| SessionError::Input("the workers are not running".into()))?;
        let resolved = self.prompts.resolve(req, &model, &mut world.supervisor, on_event);
        let resolved = keep_world_if_up(&mut self.world, resolved)?;
        self.check_cancel()?;
        let setup_seconds = started.elapsed().as_secs_f64();
        let spec = GenerateSpec {
            model: req.model.clone(),
            files: req.files.clone(),
            params: req.params.clone(),
            plan: req.plan,
            prompt: resolved.prompt,
            negative: resolved.negative,
            prompt_2: resolved.prompt_2,
            negative_2: resolved.negative_2,
            image: req.image.clone(),
            latents,
            decode: req.decode,
            keep_weights: req.keep_weights,
            preview_every: req.preview_every,
        };
        let world = self.world.as_mut().ok_or_else(|| SessionError::Input("the workers are not running".into()))?;
        let handle = world.supervisor.cancel_handle();
        self.cancel.arm(Some(handle.clone()));
        let cancel = self.cancel.clone();
        let result = world.supervisor.run_job(Job::Generate(Box::new(spec)), |e| {
            // `run_job` clears the job's cancel flag as it starts: re-apply a cancel pressed before.
            if matches!(e, JobEvent::Started { .. }) && cancel.is_requested() {
                handle.cancel();
            }
            on_event(e);
        });
        self.cancel.arm(None);
        let result = keep_world_if_up(&mut self.world, result.map_err(SessionError::from))?;

        let (latents, video) = assemble(&result.data, model.default_fps())?;
        let latents = latents.ok_or_else(|| SessionError::Input("rank 0 sent no latents".into()))?;
        if req.decode && video.is_none() {
            return Err(SessionError::Input("rank 0 sent no video".into()));
        }
        let timing = (started.elapsed().as_secs_f64(), setup_seconds, reused);
        let report = GenerationReport::new(req.model.clone(), req.plan, &result, resolved.text_job.as_ref(), timing);
        let mut video = video;
        if let Some(v) = video.as_mut() {
            v.fps = req.output.as_ref().and_then(|o| o.fps).unwrap_or(v.fps);
            let settings = Settings::of_request(req, &model, Some(v.fps))
                .map_err(|e| SessionError::Input(format!("recording the settings: {e}")))?;
            v.settings = Some(settings);
        }
        if let Some(out) = &req.output {
            if let Some(v) = video.as_mut() {
                v.save(&out.path).map_err(|e| SessionError::Output { path: out.path.clone(), msg: e.to_string() })?;
            }
            if let Some(path) = &out.latents {
                tensor_io::write_atomic(path, &[("latents", latents.clone())])
                    .map_err(|e| SessionError::Output { path: path.clone(), msg: e.to_string() })?;
            }
        }
        Ok(Generation { video, latents, report })
    }

    /// Prompt embeddings for `texts`, `max_len` tokens each (e.g. `tessera encode-prompt`), with the
    /// UMT5 encoder and tokenizer of `text` (folders or single files), on the host or split over a
    /// world of `ranks` workers.
    pub fn encode_prompts(
        &mut self,
        text: &crate::model_spec::TextModel,
        texts: &[&str],
        max_len: usize,
        placement: TextEncoderPlacement,
        ranks: usize,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Encoded, SessionError> {
        if !(text.encoder.exists() && text.tokenizer.exists()) {
            return Err(RequestError::new(
                Field::Prompt,
                format!(
                    "prompt text needs a UMT5 text encoder and its tokenizer: {} / {} (a folder's text_encoder/ and tokenizer/, or «text-encoder» FILE and «tokenizer» FILE)",
                    text.encoder.display(),
                    text.tokenizer.display()
                ),
            )
            .into());
        }
        self.prepare_world(ranks, DeviceKind::Cpu, on_event)?;
        let world = self.world.as_mut().ok_or_else(|| SessionError::Input("the workers are not running".into()))?;
        let out = self.prompts.encode(text, texts, max_len, placement, &mut world.supervisor, on_event);
        let (embeds, job) = keep_world_if_up(&mut self.world, out)?;
        Ok(Encoded { embeds, report: job.map(|j| j.report) })
    }

    /// Stops the workers (also done on drop).
    pub fn shutdown(mut self) {
        if let Some(w) = self.world.take() {
            w.supervisor.shutdown();
        }
    }

    fn check_cancel(&self) -> Result<(), SessionError> {
        if self.cancel.is_requested() {
            return Err(SessionError::Cancelled);
        }
        Ok(())
    }

    /// Makes sure a live world of `ranks` workers on `device` runs; `true` when the current one was
    /// reused.
    fn prepare_world(
        &mut self,
        ranks: usize,
        device: DeviceKind,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<bool, SessionError> {
        if let Some(w) = self.world.as_mut() {
            if w.ranks != ranks || w.device != device {
                if let Some(old) = self.world.take() {
                    old.supervisor.shutdown();
                }
            } else if let Err(e) = w.supervisor.check_idle() {
                on_event(&JobEvent::Stage { message: format!("{} (while idle); restarting the workers", explain(&e)) });
                self.world = None;
            } else {
                return Ok(true);
            }
        }
        let kind = match device {
            DeviceKind::Cpu => "CPU",
            DeviceKind::Cuda => "GPU",
        };
        on_event(&JobEvent::Stage {
            message: format!("starting {ranks} {kind} worker{}", if ranks == 1 { "" } else { "s" }),
        });
        let spec = WorldSpec {
            ranks,
            device,
            worker_exe: self.options.worker_exe.clone(),
            threads_per_rank: self.options.threads_per_rank,
            env: self.options.env.clone(),
            comm: self.options.comm,
            gpus: self.options.gpus.clone(),
            ..WorldSpec::default()
        };
        let supervisor = Supervisor::spawn(spec)?;
        self.world = Some(World { supervisor, ranks, device });
        Ok(false)
    }
}

/// Drops the world when a failure took it down (the next run starts a fresh one).
fn keep_world_if_up<T>(world: &mut Option<World>, result: Result<T, SessionError>) -> Result<T, SessionError> {
    if result.is_err() && world.as_ref().is_some_and(|w| !w.supervisor.is_up()) {
        *world = None;
    }
    result
}

/// The `latents` tensor of `path`, checked against the request's latent shape.
fn initial_latents(
    path: &std::path::Path,
    model: &ModelSpec,
    req: &GenerationRequest,
) -> Result<WireTensor, SessionError> {
    let t = tensor_io::read_tensor(path, "latents", DType::F32, &Device::Cpu)
        .map_err(|e| RequestError::new(Field::Latents, format!("«latents» {e}")))?;
    let want = latent_shape(&req.params, model.vae.scale_factor_spatial, model.vae.z_dim);
    if t.dims() != want {
        return Err(RequestError::new(
            Field::Latents,
            format!("«latents» has shape {:?}, this size needs {want:?}", t.dims()),
        )
        .into());
    }
    Ok(WireTensor::from_tensor(&t)?)
}

/// The latents and the video (from its frame chunks) that rank 0 sent.
fn assemble(
    data: &[(crate::parallel::Rank, JobData)],
    fps: f64,
) -> Result<(Option<Tensor>, Option<Video>), SessionError> {
    let mut latents = None;
    let mut chunks: Vec<(usize, Tensor)> = Vec::new();
    let mut total = 0;
    for (_, d) in data {
        match d {
            JobData::Latents(w) => latents = Some(w.to_tensor(&Device::Cpu)?),
            JobData::VideoFrames { first, total: t, frames } => {
                total = *t;
                chunks.push((*first, frames.to_tensor(&Device::Cpu)?));
            }
            JobData::Tensor { .. } => {}
        }
    }
    if chunks.is_empty() {
        return Ok((latents, None));
    }
    chunks.sort_by_key(|(first, _)| *first);
    let got: usize = chunks.iter().map(|(_, t)| t.dim(0).unwrap_or(0)).sum();
    if got != total {
        return Err(SessionError::Input(format!("rank 0 sent {got} of {total} video frames")));
    }
    let parts: Vec<&Tensor> = chunks.iter().map(|(_, t)| t).collect();
    let frames = Tensor::cat(&parts, 0)?.unsqueeze(0)?;
    Ok((latents, Some(Video { frames, fps, settings: None })))
}
