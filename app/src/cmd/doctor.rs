//! `tessera doctor`: the CPU, the NVIDIA driver's GPUs (NVML, loaded at run time) and what the worker
//! executable can drive (`tessera-worker --doctor`: CUDA devices, NCCL, peer access). The `tessera`
//! binary itself never links CUDA.

use std::path::PathBuf;

use clap::Args;
use tessera_engine::api::devices;

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Worker executable to ask about CUDA devices [default: $TESSERA_WORKER_EXE, else tessera-worker
    /// next to this program].
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let report = devices::probe(args.worker_exe.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
