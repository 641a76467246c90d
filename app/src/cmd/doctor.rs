//! `tessera doctor`: the CPU, the NVIDIA driver's GPUs (NVML, loaded at run time) and what the worker
//! executable can drive (`tessera-worker --doctor`: CUDA devices, NCCL, peer access). The `tessera`
//! binary itself never links CUDA. `--selftest` runs every collective on real workers with each
//! backend (CUDA: NCCL and sockets, compared bit for bit), with bandwidth and NCCL's transport.

use std::path::PathBuf;

use clap::Args;
use tessera_engine::api::tools::{run_selftest, CommBackend, SelftestSpec};
use tessera_engine::api::{devices, DeviceKind};

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Worker executable to ask about CUDA devices [default: $TESSERA_WORKER_EXE, else tessera-worker
    /// next to this program].
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run every collective on `--ranks` workers with each backend the device has and compare them
    /// bit for bit (exit status 1 on any mismatch or failure).
    #[arg(long)]
    pub selftest: bool,
    /// Self-test: number of worker processes.
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Self-test: cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Self-test: only this backend (default: NCCL and sockets on CUDA, sockets on CPU).
    #[arg(long, value_enum)]
    pub comm: Option<CommBackend>,
    /// Self-test: GPU of each rank (rank r on the (r mod N)-th listed GPU).
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<usize>,
    /// Self-test: payload per rank of the bandwidth runs, in MiB.
    #[arg(long, default_value_t = 16)]
    pub bench_mib: u64,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    if args.selftest {
        anyhow::ensure!(args.ranks >= 1, "--ranks must be at least 1");
        let spec = SelftestSpec {
            ranks: args.ranks,
            device: args.device,
            backends: args.comm.into_iter().collect(),
            gpus: args.gpus.clone(),
            worker_exe: args.worker_exe.clone(),
            bench_bytes: args.bench_mib << 20,
            ..SelftestSpec::default()
        };
        let report = run_selftest(&spec);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
        anyhow::ensure!(report.passed(), "collective self-test failed");
        return Ok(());
    }
    let report = devices::probe(args.worker_exe.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
