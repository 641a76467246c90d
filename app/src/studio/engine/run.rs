//! One run on the run thread: the model found (the demo's shipped folder, or the user's), the request checked and handed to
//! the engine's [`Session`] (which owns the workers and resolves the prompts), its events forwarded
//! to the UI, the video converted for display.

use std::sync::Arc;

use tessera_engine::api::RunReport;
use tessera_engine::api::{JobEvent, ModelSpec, Session, SessionError};

use super::emitter::Emitter;
use super::messages::{EngineEvent, ModelChoice, RunRequest, Video};

/// Runs `request`; every outcome (the video, a failure, a cancel) is reported through `out`.
pub(crate) fn run(session: &mut Session, request: &RunRequest, out: &Emitter) {
    match run_inner(session, request, out) {
        Ok(()) => {}
        Err(SessionError::Cancelled) => out.emit(EngineEvent::Cancelled),
        Err(e) => out.emit(EngineEvent::Failed(e.to_string())),
    }
}

fn run_inner(session: &mut Session, request: &RunRequest, out: &Emitter) -> Result<(), SessionError> {
    let root = match &request.model {
        ModelChoice::Demo => crate::studio::demo::folder().map_err(SessionError::Input)?,
        ModelChoice::Folder(p) => p.clone(),
    };
    let spec = ModelSpec::open(&root, &request.files)?;
    let generation = request.to_generation(&root, &spec);
    generation.validate(&spec)?;
    let p = &request.params;
    out.emit(EngineEvent::RunShape { height: p.height, width: p.width });
    let result = session.generate(&generation, &mut |event| match event {
        JobEvent::Stage { message } => out.emit(EngineEvent::Preparing(message.clone())),
        e => out.emit(EngineEvent::Job(e.clone())),
    })?;
    if let Some(video) = result.video {
        let frames = video.rgb8().map_err(|e| SessionError::Input(e.to_string()))?;
        let fps = video.fps;
        out.emit(EngineEvent::Video(Video { frames: Arc::new(frames), fps, exact: Arc::new(video) }));
    }
    let report = RunReport {
        wall_seconds: result.report.wall_seconds,
        ranks: result.report.ranks.into_iter().map(|r| r.run).collect(),
    };
    out.emit(EngineEvent::Finished(Box::new(report)));
    Ok(())
}
