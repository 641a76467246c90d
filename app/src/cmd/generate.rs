//! `tessera generate`: the flags become a [`GenerationRequest`] (`super::args`), and a [`Session`]
//! runs it on `tessera-worker` processes — one CPU rank by default, the plan's ranks otherwise:
//! one path for every plan. The session writes `--out` (and `--save-latents`) atomically after
//! the run succeeded; `--report` is the session's [`GenerationReport`](tessera_engine::api::GenerationReport).
//! `--preview-dir` receives the live denoise previews as PNGs while the run goes.

use anyhow::{Context, Result};
use clap::Args;
use tessera_engine::api::{write_png, CommBackend, DenoisePreview, JobEvent, Session, SessionOptions};

use super::args::GenerationArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Data plane between ranks: auto (sockets on CPU, NCCL on CUDA), socket, nccl.
    #[arg(long, value_enum, default_value_t = CommBackend::Auto)]
    pub comm: CommBackend,
    /// GPU of each rank, e.g. `0,0` for two ranks sharing GPU 0 (with `--comm socket`): rank r runs on
    /// the (r mod N)-th listed GPU. Default: rank r on GPU r.
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<usize>,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let options = SessionOptions { comm: a.comm, gpus: a.gpus, ..SessionOptions::default() };
    let a = a.generation;
    a.out.as_ref().context("--out is required (x.mp4, x.safetensors or dir/)")?;
    let request = a.request()?;
    if request.preview_every == Some(0) {
        anyhow::bail!("--preview-every must be at least 1");
    }
    if let Some(dir) = &a.preview_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating --preview-dir {}", dir.display()))?;
    }
    let mut session = Session::new(options);
    let pb = crate::progress::bar(request.params.steps as u64, "denoise");
    let mut preview_error = None;
    let result = session.generate(&request, &mut |e| match e {
        JobEvent::Stage { message } => pb.set_message(message.clone()),
        JobEvent::Progress { step, total, message, .. } => {
            pb.set_message(message.clone());
            pb.set_length(*total);
            pb.set_position(*step);
        }
        JobEvent::DenoisePreview { preview, .. } => {
            if let (Some(dir), None) = (&a.preview_dir, &preview_error) {
                preview_error = write_preview(dir, preview).err();
            }
        }
        _ => {}
    });
    pb.finish_and_clear();
    session.shutdown();
    let generation = result.map_err(|e| anyhow::anyhow!(e.cli()))?;
    if let Some(e) = preview_error {
        return Err(e.context("writing a denoise preview"));
    }
    if let Some(path) = &a.report {
        let text = generation.report.to_json();
        tessera_engine::api::write_file_atomic(path, |tmp| std::fs::write(tmp, &text).map_err(|e| e.to_string()))?;
    }
    let out = a.out.as_deref().unwrap_or(std::path::Path::new(""));
    tracing::info!(
        "wrote {} ({} rank{}, {:.2} s)",
        out.display(),
        request.plan.ranks,
        if request.plan.ranks == 1 { "" } else { "s" },
        generation.report.wall_seconds
    );
    Ok(())
}

/// `dir/step_NNN.png` (1-based step), written atomically: a viewer watching the folder never sees
/// a partial file.
fn write_preview(dir: &std::path::Path, p: &DenoisePreview) -> Result<()> {
    let path = dir.join(format!("step_{:03}.png", p.step));
    let (w, h) = (p.preview.width as usize, p.preview.height as usize);
    write_png(&path, w, h, &p.preview.rgb, None).with_context(|| path.display().to_string())?;
    Ok(())
}
