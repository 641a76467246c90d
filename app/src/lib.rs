//! `tessera_app`: the code behind the `tessera` binary, as a library so that integration tests can
//! drive the studio (`tests/studio*.rs`) and the subcommands in-process.
//!
//! - `cmd/`: one module per subcommand; each parses its own clap `Args` and returns `anyhow::Result`.
//! - `studio/`: the eframe studio (`tessera` with no arguments).
//! - `report.rs`: turning errors into one actionable line.
//! - `progress.rs`: terminal progress bars.
//!
//! Nothing here links CUDA: GPU work runs in `tessera-worker` processes. Nothing here needs `unsafe`
//! either: the workspace lints deny it and no module of this crate opts out.

pub mod cmd;
pub mod progress;
pub mod report;
pub mod studio;
