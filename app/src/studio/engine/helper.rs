//! The helper thread's work: short slow things kept off the UI and run threads (model inspection,
//! predictions, presets, saving).

use std::path::Path;

use tessera_engine::api::planning::RankPrediction;
use tessera_engine::api::{DeviceKind, ModelSpec};

use super::messages::{ModelChoice, RunRequest, Video};

/// The planner's per-rank peaks per phase for `request`; `Err` when the model or the request
/// cannot be read or the plan does not validate.
pub fn predict(request: &RunRequest) -> Result<Vec<RankPrediction>, String> {
    use tessera_engine::api::planning::{predict, Options, Request, Target};
    let root = match &request.model {
        ModelChoice::Demo => crate::studio::demo::folder()?,
        ModelChoice::Folder(p) => p.clone(),
    };
    let spec = ModelSpec::open(&root, &request.files).map_err(|e| e.to_string())?;
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
    let gui = |e: String| tessera_engine::api::render(&e, tessera_engine::api::Audience::Gui);
    Ok(predict(&spec, &req, &request.plan, &opts).map_err(|e| gui(e.to_string()))?.ranks)
}

/// Writes `video` to `path`; the kind follows the name (`.mp4`, `.safetensors`, folder `/`).
pub fn save(path: &Path, video: &Video) -> Result<(), String> {
    let kind = tessera_engine::api::OutputKind::of(path)?;
    // Saving into a folder that does not exist yet creates it (the CLI's --out does not: scripts
    // should fail on typos, a user picking a name in the studio should not).
    if let Some(dir) =
        path.parent().filter(|d| !d.as_os_str().is_empty() && kind != tessera_engine::api::OutputKind::PngFrames)
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    video.exact.save(path).map_err(|e| e.to_string())
}
