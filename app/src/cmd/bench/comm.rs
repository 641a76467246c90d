//! `tessera bench comm --ranks N`: bandwidth and latency of every collective at several payload sizes,
//! measured across real worker processes (after a correctness check of the same world).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tessera_engine::api::tools::{
    BenchRow, BenchSpec, CheckSpec, CollectiveOp, CommBackend, Job, JobOutput, ReduceOp, Supervisor, WireDType,
    WorldSpec,
};
use tessera_engine::api::{DeviceKind, JobEvent};

#[derive(Debug, Clone, Args)]
pub struct BenchCommArgs {
    /// Number of worker processes.
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Data-plane backend (auto: sockets on CPU, NCCL on CUDA).
    #[arg(long, value_enum, default_value_t = CommBackend::Auto)]
    pub comm: CommBackend,
    /// Payload per rank, comma-separated, with optional K/M/G suffix (powers of 1024).
    #[arg(long, value_delimiter = ',', default_value = "4K,64K,1M,16M")]
    pub sizes: Vec<String>,
    /// Element type: f32, f16, bf16, f64, u8, u32, i64.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value_t = 10)]
    pub iters: u32,
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Write the run report (wall time, per-rank peaks and phases) as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Worker executable [default: $TESSERA_WORKER_EXE, else tessera-worker next to this program].
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (digits, scale) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits.parse().with_context(|| format!("invalid size {s:?} (examples: 512, 64K, 16M)"))?;
    Ok(n * scale)
}

fn parse_dtype(s: &str) -> anyhow::Result<WireDType> {
    Ok(match s {
        "f32" => WireDType::F32,
        "f16" => WireDType::F16,
        "bf16" => WireDType::BF16,
        "f64" => WireDType::F64,
        "u8" => WireDType::U8,
        "u32" => WireDType::U32,
        "i64" => WireDType::I64,
        other => bail!("unknown dtype {other:?} (expected f32, f16, bf16, f64, u8, u32 or i64)"),
    })
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} B"),
    }
}

/// The table printed by `tessera bench comm`.
pub fn render_table(rows: &[BenchRow]) -> String {
    let mut s = format!(
        "{:<22} {:>10} {:>6} {:>12} {:>12} {:>11} {:>11}\n",
        "op", "size/rank", "iters", "mean (us)", "best (us)", "algbw GB/s", "busbw GB/s"
    );
    for r in rows {
        s += &format!(
            "{:<22} {:>10} {:>6} {:>12.1} {:>12.1} {:>11.3} {:>11.3}\n",
            r.op,
            human_bytes(r.bytes),
            r.iters,
            r.mean_secs * 1e6,
            r.min_secs * 1e6,
            r.algbw_gbps,
            r.busbw_gbps
        );
    }
    s
}

pub fn run(args: BenchCommArgs) -> anyhow::Result<()> {
    if args.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    let sizes = args.sizes.iter().map(|s| parse_size(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let dtype = parse_dtype(&args.dtype)?;
    let spec = WorldSpec {
        ranks: args.ranks,
        device: args.device,
        comm: args.comm,
        worker_exe: args.worker_exe.clone(),
        ..WorldSpec::default()
    };
    let mut sup = Supervisor::spawn(spec).context("starting the workers")?;
    // Fail loudly on a broken data plane before timing it.
    let check = CheckSpec {
        op: CollectiveOp::AllReduce(ReduceOp::Sum),
        dtype,
        shape: vec![args.ranks * 16],
        group: None,
        seed: 0,
    };
    sup.run_job(Job::CommCheck(check), |_| {}).context("collective self-check")?;

    let n = args.ranks;
    let bench = BenchSpec {
        ops: vec![
            CollectiveOp::SendRecv,
            CollectiveOp::AllReduce(ReduceOp::Sum),
            CollectiveOp::AllGather { dim: 0 },
            CollectiveOp::Broadcast { root: 0 },
            CollectiveOp::AllToAll { split_dim: 0, concat_dim: 0 },
            CollectiveOp::Barrier,
        ],
        sizes_bytes: sizes,
        dtype,
        iters: args.iters,
        warmup: args.warmup,
    };
    eprintln!("bench comm: {n} {} rank(s), {:?}", args.device, args.dtype);
    let result = sup
        .run_job(Job::CommBench(bench), |e| {
            if let JobEvent::Progress { rank, step, total, message } = e {
                if rank.0 == 0 {
                    eprintln!("[{step}/{total}] {message}");
                }
            }
        })
        .context("running the benchmark")?;
    let JobOutput::Bench(rows) = &result.outputs[0] else { bail!("rank 0 returned no benchmark table") };
    print!("{}", render_table(rows));
    if let Some(path) = &args.report {
        result.report.write_json(path).with_context(|| format!("writing the report {}", path.display()))?;
    }
    sup.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_dtypes_parse() {
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("16m").unwrap(), 16 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("x1").unwrap_err().to_string().contains("invalid size"));
        assert_eq!(parse_dtype("bf16").unwrap(), WireDType::BF16);
        assert!(parse_dtype("f8").is_err());
    }
}
