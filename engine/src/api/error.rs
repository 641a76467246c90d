//! [`SessionError`]: why a generation did not produce a video, and [`explain`], how a runtime
//! failure reads for people (the rank, what happened, what to change).

use std::path::PathBuf;

use crate::fields::{render, Audience};
use crate::model_spec::ModelSpecError;
use crate::pipeline::request::RequestError;
use crate::runtime::RuntimeError;

/// Why a generation did not produce a video. `Display` is for the studio; [`SessionError::cli`]
/// names CLI flags where a request field is at fault.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Model: {}", render(&.0.to_string(), Audience::Gui))]
    Model(#[from] ModelSpecError),
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("{}", explain(.0))]
    Runtime(RuntimeError),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Input(String),
    #[error("writing {}: {msg}", .path.display())]
    Output { path: PathBuf, msg: String },
}

impl SessionError {
    /// The message for a terminal (request fields named by their flags).
    pub fn cli(&self) -> String {
        match self {
            Self::Request(e) => e.cli(),
            Self::Model(e) => render(&e.to_string(), Audience::Cli),
            other => other.to_string(),
        }
    }
}

impl From<RuntimeError> for SessionError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Cancelled => Self::Cancelled,
            e => Self::Runtime(e),
        }
    }
}

impl From<candle_core::Error> for SessionError {
    fn from(e: candle_core::Error) -> Self {
        Self::Input(e.to_string())
    }
}

impl From<crate::text::TextError> for SessionError {
    fn from(e: crate::text::TextError) -> Self {
        Self::Input(format!("encoding the prompts: {e}"))
    }
}

/// A runtime error as people read it: what happened, naming the rank, and what to change.
pub fn explain(err: &RuntimeError) -> String {
    let oom = |m: &str| {
        let m = m.to_ascii_lowercase();
        m.contains("out of memory") || m.contains("oom") || m.contains("memory allocation")
    };
    match err {
        RuntimeError::WorkerFailed { rank, message } if oom(message) => format!(
            "Rank {rank} ran out of memory: {message}. Fix: lower the size or frames, raise VAE parallel or FSDP, or use the tiles VAE mode (`tessera plan` predicts each rank's peak)."
        ),
        RuntimeError::WorkerFailed { rank, message } => format!("Rank {rank} failed: {message}"),
        RuntimeError::WorkerExited { rank, status } => format!(
            "Rank {rank} exited ({status}); the other workers were stopped. If the system killed it for memory, lower the size or spread the work over more ranks; the next run starts fresh workers."
        ),
        RuntimeError::Handshake { detail, .. } => {
            format!("The workers did not start: {detail}. Check `tessera doctor`.")
        }
        other => other.to_string(),
    }
}
