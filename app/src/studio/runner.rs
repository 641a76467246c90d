//! One run, on the engine thread: check the request against the model, prepare the prompt
//! embeddings, start (or reuse) the worker world, run the whole generation there (`Job::Generate`:
//! load, sharded denoise, patch-parallel VAE decode) while forwarding its events, and hand back the
//! video.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use tessera_engine::media::{self, Frames, OutputKind};
use tessera_engine::parallel::plan::{ParallelPlan, PlanModel, VaeMode};
use tessera_engine::pipeline::GenerateParams;
use tessera_engine::planner::predict::RankPrediction;
use tessera_engine::runtime::protocol::{DeviceKind, GenerateSpec, Job};
use tessera_engine::runtime::{JobEvent, RuntimeError, Supervisor, WorldSpec};
use tessera_engine::tensor_io;

use super::engine_thread::{CancelSlot, Emitter, EngineEvent, Video};
use super::model_info::{self, ModelInfo};

/// Which model a run uses.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelChoice {
    /// The built-in demo (written to the data dir at first use).
    Demo,
    Folder(PathBuf),
}

/// Everything a run needs, copied from the settings when Generate is pressed.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    pub model: ModelChoice,
    pub prompt: String,
    pub negative_prompt: String,
    /// Input image for image-to-video (only sent when the model takes one).
    pub image: Option<PathBuf>,
    pub params: GenerateParams,
    pub plan: ParallelPlan,
    pub device: DeviceKind,
}

impl RunRequest {
    pub fn is_demo(&self) -> bool {
        self.model == ModelChoice::Demo
    }
}

/// A started world and what it was started for.
pub struct World {
    pub supervisor: Supervisor,
    ranks: usize,
    device: DeviceKind,
}

pub(crate) struct RunContext<'a> {
    pub worker_exe: Option<&'a Path>,
    pub data_dir: Option<&'a Path>,
    pub cancel: &'a CancelSlot,
    pub out: &'a Emitter,
}

/// Checks a request against a model: the size rules and the plan's arithmetic. The message names
/// the nearest valid values (from `GenerateParams::validate`) or the plan fix (`ParallelPlan::validate`).
pub fn check(params: &GenerateParams, plan: &ParallelPlan, info: &ModelInfo) -> Result<(), String> {
    params.validate(info.size_multiple).map_err(|e| format!("Invalid size: {e}"))?;
    plan.validate(PlanModel { num_heads: info.num_heads, cfg: params.guidance > 1.0 })
        .map_err(|e| format!("Invalid parallel plan: {e}"))?;
    let latent_rows = params.height / info.vae_spatial;
    if plan.vae_mode == VaeMode::Halo && plan.vae_parallel > latent_rows {
        return Err(format!(
            "Invalid parallel plan: a halo decode over {n} ranks needs at least {n} latent rows; height {} has {latent_rows} (raise the height or lower VAE parallel)",
            params.height,
            n = plan.vae_parallel,
        ));
    }
    Ok(())
}

/// Runs `request`; every outcome (the video, a failure, a cancel) is reported through `ctx.out`.
pub(crate) fn run(world: &mut Option<World>, request: &RunRequest, ctx: &RunContext) {
    match run_inner(world, request, ctx) {
        Ok(()) => {}
        Err(RunError::Cancelled) => ctx.out.emit(EngineEvent::Cancelled),
        Err(RunError::Message(text)) => ctx.out.emit(EngineEvent::Failed(text)),
    }
}

enum RunError {
    Cancelled,
    Message(String),
}

impl From<String> for RunError {
    fn from(s: String) -> Self {
        Self::Message(s)
    }
}

fn run_inner(world: &mut Option<World>, request: &RunRequest, ctx: &RunContext) -> Result<(), RunError> {
    let data_dir = ctx.data_dir.ok_or_else(|| {
        "no data folder: set $TESSERA_DATA_DIR or $HOME (the studio keeps the demo model and run files there)"
            .to_string()
    })?;
    let root = match &request.model {
        ModelChoice::Demo => {
            if !data_dir.join("demo-model-v1/model_index.json").is_file() {
                ctx.out.emit(EngineEvent::Preparing("writing the demo model (first start only)".into()));
            }
            super::demo::ensure(data_dir).map_err(|e| format!("cannot create the demo model: {e:#}"))?
        }
        ModelChoice::Folder(p) => p.clone(),
    };
    let info = model_info::inspect(&root).map_err(|e| format!("Model: {e}"))?;
    check(&request.params, &request.plan, &info)?;
    let p = &request.params;
    ctx.out.emit(EngineEvent::RunShape { height: p.height, width: p.width });
    if ctx.cancel.is_requested() {
        return Err(RunError::Cancelled);
    }

    let work = data_dir.join("work");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let video_path = work.join("video.safetensors");
    let plan = &request.plan;
    let supervisor = start_world(world, plan.ranks, request.device, ctx)?;
    if ctx.cancel.is_requested() {
        return Err(RunError::Cancelled);
    }
    if plan.text_encoder == tessera_engine::parallel::plan::TextEncoderPlacement::Sharded && info.has_text_encoder {
        ctx.out.emit(EngineEvent::Preparing("encoding the prompts on the workers".into()));
    }
    let (prompt, negative) = super::prompts::embeds(request, &info, &root, supervisor, &work)?;
    let spec = GenerateSpec {
        model: root.clone(),
        params: p.clone(),
        plan: *plan,
        prompt,
        negative,
        image: request.image.clone().filter(|_| info.image_input),
        latents: None,
        out: video_path.clone(),
        save_latents: None,
        fps: None,
        decode: true,
    };
    let handle = supervisor.cancel_handle();
    ctx.cancel.arm(Some(handle.clone()));
    let result = supervisor.run_job(Job::Generate(Box::new(spec)), |event| {
        // `run_job` clears the cancel flag as it starts: a cancel pressed just before is re-applied.
        if matches!(event, JobEvent::Started { .. }) && ctx.cancel.is_requested() {
            handle.cancel();
        }
        ctx.out.emit(EngineEvent::Job(event.clone()));
    });
    ctx.cancel.arm(None);
    let result = match result {
        Ok(r) => r,
        Err(RuntimeError::Cancelled) => return Err(RunError::Cancelled),
        Err(e) => {
            if world.as_ref().is_some_and(|w| !w.supervisor.is_up()) {
                *world = None;
            }
            return Err(explain(&e).into());
        }
    };
    let video = read_video(&video_path)?;
    // The pipelines' defaults: 24 fps for TI2V (Wan2.2 VAE), 16 otherwise.
    let fps = if info.vae_spatial == 16 { 24.0 } else { 16.0 };
    ctx.out.emit(EngineEvent::Video(Video { frames: Arc::new(video), fps }));
    ctx.out.emit(EngineEvent::Finished(Box::new(result.report)));
    Ok(())
}

/// The world for `ranks` on `device`: the current one if it fits and is up, else a new one.
fn start_world<'w>(
    world: &'w mut Option<World>,
    ranks: usize,
    device: DeviceKind,
    ctx: &RunContext,
) -> Result<&'w mut Supervisor, RunError> {
    let fits = world.as_ref().is_some_and(|w| w.ranks == ranks && w.device == device && w.supervisor.is_up());
    if !fits {
        if let Some(old) = world.take() {
            old.supervisor.shutdown();
        }
        let what = match device {
            DeviceKind::Cpu => format!("starting {ranks} CPU worker{}", if ranks == 1 { "" } else { "s" }),
            DeviceKind::Cuda => format!("starting {ranks} GPU worker{}", if ranks == 1 { "" } else { "s" }),
        };
        ctx.out.emit(EngineEvent::Preparing(what));
        let spec =
            WorldSpec { ranks, device, worker_exe: ctx.worker_exe.map(Path::to_path_buf), ..WorldSpec::default() };
        let supervisor = Supervisor::spawn(spec).map_err(|e| explain(&e))?;
        *world = Some(World { supervisor, ranks, device });
    }
    match world.as_mut() {
        Some(w) => Ok(&mut w.supervisor),
        None => Err("the worker world is not running".to_string().into()),
    }
}

/// A runtime error as the message the user sees: what happened (naming the rank) and a fix.
pub fn explain(err: &RuntimeError) -> String {
    let oom = |m: &str| {
        let m = m.to_ascii_lowercase();
        m.contains("out of memory") || m.contains("oom") || m.contains("memory allocation")
    };
    match err {
        RuntimeError::WorkerFailed { rank, message } if oom(message) => format!(
            "Rank {rank} ran out of memory: {message}. Fix: lower the size or frames, raise VAE parallel, or use the tiles VAE mode."
        ),
        RuntimeError::WorkerFailed { rank, message } => format!("Rank {rank} failed: {message}"),
        RuntimeError::WorkerExited { rank, status } => format!(
            "Rank {rank} exited ({status}); the workers were stopped. If the system killed it for memory, lower the size or spread the work over more ranks. Generate starts fresh workers."
        ),
        RuntimeError::Handshake { detail, .. } => {
            format!("The workers did not start: {detail}. Check `tessera doctor`.")
        }
        other => other.to_string(),
    }
}

/// The planner's per-rank peaks per phase for `request`; `Err` when the model or the request
/// cannot be read or the plan does not validate.
pub fn predict(request: &RunRequest, data_dir: Option<&Path>) -> Result<Vec<RankPrediction>, String> {
    use tessera_engine::planner::{predict, ModelSpec, Options, Request, Target};
    let root = match &request.model {
        ModelChoice::Demo => data_dir.map(|d| d.join("demo-model-v1")).ok_or("no data folder")?,
        ModelChoice::Folder(p) => p.clone(),
    };
    let spec = ModelSpec::from_dir(&root).map_err(|e| e.to_string())?;
    let p = &request.params;
    let target = match request.device {
        DeviceKind::Cpu => Target::Cpu,
        DeviceKind::Cuda => Target::Cuda,
    };
    let mut opts = Options::new(target);
    // Each CPU rank gets its share of the cores (as the supervisor sets RAYON_NUM_THREADS).
    opts.threads = (opts.threads / request.plan.ranks.max(1)).max(1);
    let image = request.image.is_some() && spec.index.expand_timesteps;
    let req = Request { height: p.height, width: p.width, frames: p.frames, guidance: p.guidance, image };
    Ok(predict(&spec, &req, &request.plan, &opts).map_err(|e| e.to_string())?.ranks)
}

/// Rank 0's `video` tensor `(1, F, 3, H, W)` in [0, 1] as RGB8 frames.
fn read_video(path: &Path) -> Result<Frames, String> {
    let video = tensor_io::read_tensor(path, "video", DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    Frames::from_tensor(&video).map_err(|e| e.to_string())
}

/// Writes `video` to `path`; the kind follows the name (`.mp4`, `.safetensors`, folder `/`).
pub fn save(path: &Path, video: &Video) -> Result<(), String> {
    let kind = OutputKind::of(path)?;
    // Saving into a folder that does not exist yet creates it (the CLI's --out does not: scripts
    // should fail on typos, a user picking a name in the studio should not).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && kind != OutputKind::PngFrames) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let result = match kind {
        OutputKind::Mp4 => media::write_mp4(path, &video.frames, video.fps),
        OutputKind::PngFrames => media::write_png_frames(path, &video.frames),
        OutputKind::Safetensors => {
            let f = &video.frames;
            let data: Vec<f32> = f.rgb.iter().flatten().map(|v| *v as f32 / 255.0).collect();
            // (F, H, W, 3) → (1, F, 3, H, W), the generate command's `video` layout in [0, 1].
            let tensor = candle_core::Tensor::from_vec(data, (f.rgb.len(), f.height, f.width, 3), &Device::Cpu)
                .and_then(|t| t.permute((0, 3, 1, 2))?.unsqueeze(0)?.contiguous())
                .map_err(|e| e.to_string())?;
            return tensor_io::write_atomic(path, &[("video", tensor)]).map_err(|e| e.to_string());
        }
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            root: PathBuf::from("/m"),
            kind: "k".into(),
            weights_bytes: 0,
            dtype: "F32".into(),
            size_multiple: 32,
            num_heads: 4,
            text_dim: 32,
            z_dim: 8,
            vae_spatial: 16,
            two_experts: false,
            image_input: false,
            has_text_encoder: false,
        }
    }

    fn params(height: usize, width: usize, frames: usize) -> GenerateParams {
        GenerateParams { height, width, frames, steps: 4, guidance: 5.0, guidance_2: None, shift: None, seed: 0 }
    }

    #[test]
    fn check_names_nearest_sizes_and_plan_fixes() {
        let plan = ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 2, ..ParallelPlan::default() };
        assert!(check(&params(192, 256, 9), &plan, &info()).is_ok());
        let err = check(&params(200, 256, 9), &plan, &info()).unwrap_err();
        assert_eq!(err, "Invalid size: --height 200 is not a multiple of 32 for this model; nearest valid: 192 or 224");
        let bad = ParallelPlan { ulysses: 1, ..plan };
        assert!(check(&params(192, 256, 9), &bad, &info())
            .unwrap_err()
            .starts_with("Invalid parallel plan: --ulysses 1"));
        let wide = ParallelPlan { ranks: 4, ulysses: 4, vae_parallel: 4, ..plan };
        assert!(check(&params(32, 256, 9), &wide, &info()).unwrap_err().contains("at least 4 latent rows"));
    }

    #[test]
    fn oom_and_exits_name_the_rank_and_a_fix() {
        use tessera_engine::parallel::Rank;
        let oom = explain(&RuntimeError::WorkerFailed {
            rank: Rank(1),
            message: "CUDA_ERROR_OUT_OF_MEMORY: out of memory".into(),
        });
        assert!(oom.starts_with("Rank 1 ran out of memory") && oom.contains("Fix:"), "{oom}");
        let exit = explain(&RuntimeError::WorkerExited { rank: Rank(0), status: "signal 9 (SIGKILL)".into() });
        assert!(exit.starts_with("Rank 0 exited (signal 9 (SIGKILL))"), "{exit}");
    }
}
