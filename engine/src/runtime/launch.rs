//! Finding and starting `tessera-worker`: the executable lookup and the command-line contract
//! ([`WorkerArgs`], parsed by the worker with clap and produced by the supervisor with `to_args`, so
//! the two sides cannot drift).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::protocol::DeviceKind;
use super::RuntimeError;
use crate::parallel::Rank;

/// Overrides where the worker executable is found.
pub const WORKER_EXE_ENV: &str = "TESSERA_WORKER_EXE";
pub const WORKER_EXE_NAME: &str = "tessera-worker";

/// The data plane backend a world uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum CommBackend {
    /// Sockets on CPU, NCCL on CUDA.
    #[default]
    Auto,
    /// Unix sockets; CUDA tensors travel through host memory (several ranks on one GPU work).
    Socket,
    /// NCCL (CUDA builds only; one GPU per rank).
    Nccl,
}

impl CommBackend {
    pub fn resolve(self, device: DeviceKind) -> CommBackend {
        match (self, device) {
            (CommBackend::Auto, DeviceKind::Cpu) => CommBackend::Socket,
            (CommBackend::Auto, DeviceKind::Cuda) => CommBackend::Nccl,
            (other, _) => other,
        }
    }
}

/// Command line of `tessera-worker`.
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(name = "tessera-worker", about = "Tessera worker process (started by the engine, one per device)")]
pub struct WorkerArgs {
    /// Print this worker's view of the devices as JSON and exit (used by `tessera doctor`).
    #[arg(long)]
    pub doctor: bool,
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    #[arg(long, default_value_t = 1)]
    pub world_size: usize,
    /// Directory holding the control socket and the data-plane sockets of this world.
    #[arg(long)]
    pub rendezvous: Option<PathBuf>,
    #[arg(long, value_parser = parse_device, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value_t = 0)]
    pub device_ordinal: usize,
    #[arg(long, value_enum, default_value_t = CommBackend::Auto)]
    pub comm: CommBackend,
    /// The supervisor's pid: the worker exits if its parent is already gone when it starts.
    #[arg(long)]
    pub parent_pid: Option<u32>,
    #[arg(long, default_value_t = 20_000)]
    pub handshake_timeout_ms: u64,
    #[arg(long, default_value_t = 300_000)]
    pub comm_timeout_ms: u64,
    /// Test knob: sleep this long before connecting to the supervisor (simulates a stuck start).
    #[arg(long, hide = true)]
    pub debug_connect_delay_ms: Option<u64>,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s {
        "cpu" => Ok(DeviceKind::Cpu),
        "cuda" => Ok(DeviceKind::Cuda),
        other => Err(format!("unknown device {other:?} (expected cpu or cuda)")),
    }
}

impl WorkerArgs {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |k: &str, v: String| {
            args.push(k.into());
            args.push(v.into());
        };
        push("--rank", self.rank.to_string());
        push("--world-size", self.world_size.to_string());
        push("--device", self.device.to_string());
        push("--device-ordinal", self.device_ordinal.to_string());
        push(
            "--comm",
            match self.comm {
                CommBackend::Auto => "auto",
                CommBackend::Socket => "socket",
                CommBackend::Nccl => "nccl",
            }
            .into(),
        );
        push("--handshake-timeout-ms", self.handshake_timeout_ms.to_string());
        push("--comm-timeout-ms", self.comm_timeout_ms.to_string());
        if let Some(pid) = self.parent_pid {
            push("--parent-pid", pid.to_string());
        }
        if let Some(ms) = self.debug_connect_delay_ms {
            push("--debug-connect-delay-ms", ms.to_string());
        }
        if self.doctor {
            args.push("--doctor".into());
        }
        if let Some(dir) = &self.rendezvous {
            args.push("--rendezvous".into());
            args.push(dir.clone().into_os_string());
        }
        args
    }

    pub fn rank(&self) -> Rank {
        Rank(self.rank)
    }
}

/// Finds the worker executable: `explicit` (from `WorldSpec`), then `$TESSERA_WORKER_EXE`, then
/// `tessera-worker` next to the current executable, then one directory up (test binaries live in
/// `target/<profile>/deps/`, the worker in `target/<profile>/`).
pub fn resolve_worker_exe(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut searched = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else if let Some(p) = std::env::var_os(WORKER_EXE_ENV) {
        candidates.push(PathBuf::from(p));
    } else if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            candidates.push(dir.join(WORKER_EXE_NAME));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(WORKER_EXE_NAME));
            }
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        searched.push(c);
    }
    Err(RuntimeError::WorkerExeNotFound { searched })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip_through_clap() {
        let args = WorkerArgs {
            doctor: false,
            rank: 2,
            world_size: 4,
            rendezvous: Some(PathBuf::from("/tmp/tessera-1-abc")),
            device: DeviceKind::Cuda,
            device_ordinal: 2,
            comm: CommBackend::Socket,
            parent_pid: Some(42),
            handshake_timeout_ms: 1500,
            comm_timeout_ms: 9000,
            debug_connect_delay_ms: Some(30_000),
        };
        let mut argv: Vec<OsString> = vec!["tessera-worker".into()];
        argv.extend(args.to_args());
        assert_eq!(WorkerArgs::try_parse_from(argv).unwrap(), args);
    }

    #[test]
    fn missing_explicit_exe_lists_the_path() {
        let err = resolve_worker_exe(Some(Path::new("/nonexistent/tessera-worker"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tessera-worker"), "{err}");
    }
}
