//! Interleaved engine-vs-engine timing: each contender's case runs in a fresh process, the
//! contenders alternate (A B A B …) after one untimed warm-up process each, and the machine's load
//! is watched so that a row measured on a busy machine is never printed as a comparison.
//!
//! Why these measures of "busy": the 1-minute load average counts the benchmark's own threads (two
//! busy threads hold it near 2.0 on their own), so during a run it cannot tell a quiet machine from
//! a busy one. What is printed and checked is therefore:
//! - the load average before the row (the bench waits up to `settle` for it to fall to `max_load`,
//!   so the previous row's own load has decayed) and after it, as the kernel reports them;
//! - the CPU time other processes used during every timed run, in cores: all CPUs' busy time
//!   (`/proc/stat`, steal included, so a noisy VM neighbour counts) minus the case process's own
//!   CPU time (`cutime + cstime` of this process once the child is reaped), over the run's wall time.
//!
//! A row is a comparison only when the load average before it was at most `max_load` and no run's
//! others' CPU exceeded `max_other_cores`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::support::run_child;

/// What every case process prints (extra fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct CaseTiming {
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    /// Model FLOPs of the timed work, when the case counts them (Tessera's VAE case does).
    #[serde(default)]
    pub flops: Option<f64>,
}

/// One engine's way to start a fresh case process.
pub struct Contender<'a> {
    pub name: String,
    pub command: Box<dyn Fn() -> Command + 'a>,
}

/// One timed run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    /// CPU used by other processes during the run, in cores (see the module doc).
    pub other_cores: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for an empty sample; the median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { median, min: v[0], max: v[n - 1] })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineRuns {
    pub name: String,
    pub runs: Vec<Run>,
}

impl EngineRuns {
    pub fn seconds(&self) -> Spread {
        Spread::of(&self.runs.iter().map(|r| r.seconds).collect::<Vec<_>>()).expect("at least one run")
    }

    pub fn peak_gib(&self) -> Spread {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        Spread::of(&self.runs.iter().map(|r| gib(r.peak_rss_bytes)).collect::<Vec<_>>()).expect("at least one run")
    }

    /// The FLOPs a run reported (the first that did).
    pub fn flops(&self) -> Option<f64> {
        self.runs.iter().find_map(|r| r.flops)
    }
}

/// Limits under which a row counts as a comparison.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Gate {
    /// Highest 1-minute load average allowed before the row starts.
    pub max_load: f64,
    /// Highest CPU use of other processes during any timed run, in cores.
    pub max_other_cores: f64,
    /// How long to wait for the load average to fall to `max_load` before a row.
    pub settle: Duration,
}

/// Everything measured for one row.
#[derive(Debug, Clone, Serialize)]
pub struct RowMeasure {
    pub engines: Vec<EngineRuns>,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    /// Highest 1-minute load average sampled (every second) during the row, own threads included.
    pub max_load_during: f64,
    pub max_other_cores: f64,
    /// Why the row is not a comparison (empty when it is).
    pub refused: Vec<String>,
}

impl RowMeasure {
    pub fn is_comparison(&self) -> bool {
        self.refused.is_empty()
    }

    pub fn engine(&self, name: &str) -> Option<&EngineRuns> {
        self.engines.iter().find(|e| e.name == name)
    }

    /// One line about the machine during the row.
    pub fn load_note(&self) -> String {
        let l = |a: [f64; 3]| format!("{:.2} {:.2} {:.2}", a[0], a[1], a[2]);
        format!(
            "load average before {} / after {} (max during {:.2}, own threads included); others' CPU ≤ {:.2} cores",
            l(self.load_before),
            l(self.load_after),
            self.max_load_during,
            self.max_other_cores
        )
    }
}

/// The three load averages of `/proc/loadavg`.
pub fn load_average() -> Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    parse_loadavg(&text)
}

fn parse_loadavg(text: &str) -> Result<[f64; 3]> {
    let v: Vec<f64> = text.split_whitespace().take(3).map(str::parse).collect::<Result<_, _>>()?;
    match v[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => bail!("unexpected /proc/loadavg: {text:?}"),
    }
}

/// Busy clock ticks of all CPUs (everything but idle and iowait; steal included) from `/proc/stat`.
fn busy_ticks(stat: &str) -> Result<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    if v.len() < 8 {
        bail!("short cpu line in /proc/stat: {line:?}");
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user.
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// This process's own CPU ticks plus those of its reaped children (`/proc/self/stat` fields 14–17).
fn own_and_children_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) may contain spaces; fields after it start past the last ')'.
    let rest = stat.rsplit_once(')').context("bad /proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let tick = |n: usize| -> Result<u64> { Ok(f.get(n - 3).context("short /proc/self/stat")?.parse()?) };
    Ok(tick(14)? + tick(15)? + tick(16)? + tick(17)?)
}

/// `/proc/stat` and `/proc/self/stat` count in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

struct CpuSnapshot {
    busy: u64,
    ours: u64,
    at: Instant,
}

impl CpuSnapshot {
    fn now() -> Result<Self> {
        let busy = busy_ticks(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)?;
        let ours =
            own_and_children_ticks(&std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?)?;
        Ok(Self { busy, ours, at: Instant::now() })
    }

    /// Cores used by other processes since `self`.
    fn others_since(&self, later: &Self) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let ours = later.ours.saturating_sub(self.ours) as f64;
        ((busy - ours) / TICKS_PER_SECOND / wall).max(0.0)
    }
}

/// Samples the 1-minute load average every second until dropped; keeps the maximum.
struct LoadWatch {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<f64>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl LoadWatch {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(0f64));
        let (s, m) = (stop.clone(), max.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok([one, _, _]) = load_average() {
                    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                    *g = g.max(one);
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
        });
        Self { stop, max, handle: Some(handle) }
    }

    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().ok();
        }
        *self.max.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Waits (up to `gate.settle`) for the 1-minute load average to fall to `gate.max_load`.
fn settle(gate: &Gate) -> Result<[f64; 3]> {
    let deadline = Instant::now() + gate.settle;
    loop {
        let load = load_average()?;
        if load[0] <= gate.max_load || Instant::now() >= deadline {
            return Ok(load);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn timed_run(c: &Contender<'_>) -> Result<Run> {
    let before = CpuSnapshot::now()?;
    let r: CaseTiming = run_child((c.command)()).with_context(|| format!("{} case", c.name))?;
    let after = CpuSnapshot::now()?;
    Ok(Run {
        seconds: r.seconds,
        peak_rss_bytes: r.peak_rss_bytes,
        other_cores: before.others_since(&after),
        flops: r.flops,
    })
}

/// Runs one row: a warm-up process per contender, then `runs` rounds of one fresh process each,
/// contenders in the given order every round.
pub fn run_row(contenders: &[Contender<'_>], warmup: usize, runs: usize, gate: &Gate) -> Result<RowMeasure> {
    if contenders.is_empty() || runs == 0 {
        bail!("a benchmark row needs at least one engine and one timed run");
    }
    let load_before = settle(gate)?;
    let watch = LoadWatch::start();
    for c in contenders {
        for _ in 0..warmup {
            let _: CaseTiming = run_child((c.command)()).with_context(|| format!("{} warm-up case", c.name))?;
        }
    }
    let mut engines: Vec<EngineRuns> =
        contenders.iter().map(|c| EngineRuns { name: c.name.clone(), runs: Vec::with_capacity(runs) }).collect();
    for _ in 0..runs {
        for (c, e) in contenders.iter().zip(engines.iter_mut()) {
            let run = timed_run(c)?;
            eprintln!(
                "  {}: {:.3} s, peak {:.2} GiB, others {:.2} cores",
                c.name,
                run.seconds,
                run.peak_rss_bytes as f64 / (1u64 << 30) as f64,
                run.other_cores
            );
            e.runs.push(run);
        }
    }
    let max_load_during = watch.finish();
    let load_after = load_average()?;
    let max_other_cores = engines.iter().flat_map(|e| e.runs.iter().map(|r| r.other_cores)).fold(0f64, f64::max);
    let mut refused = Vec::new();
    if load_before[0] > gate.max_load {
        refused.push(format!("load average {:.2} > {:.2} before the row", load_before[0], gate.max_load));
    }
    if max_other_cores > gate.max_other_cores {
        refused.push(format!(
            "other processes used up to {max_other_cores:.2} cores during a run (limit {:.2})",
            gate.max_other_cores
        ));
    }
    Ok(RowMeasure { engines, load_before, load_after, max_load_during, max_other_cores, refused })
}

/// The machine's f32 peak FLOP/s as derived from the CPU: cores × FMA pipes × f32 lanes × 2 × clock.
#[derive(Debug, Clone, Serialize)]
pub struct F32Peak {
    pub cores: usize,
    pub lanes: usize,
    pub fma_pipes: usize,
    /// The clock the peak uses: the measured one when measured, else `cpu MHz`.
    pub ghz: f64,
    /// `cpu MHz` of `/proc/cpuinfo` (under KVM the nominal clock, not the boost clock).
    pub cpuinfo_ghz: f64,
    /// Clock measured by [`measure_clock_ghz`], if it ran.
    pub measured_ghz: Option<f64>,
    pub model: String,
}

/// The core clock while one thread runs, in GHz: the time of a chain of dependent 64-bit
/// `imul` + `add` pairs (3 + 1 cycles of latency on every x86 core since Sandy Bridge and Zen 1),
/// fastest of several tries. Under a VM `cpu MHz` is the nominal clock; this sees the boost clock
/// the benchmark actually runs at (taken on a quiet machine, like the timings).
pub fn measure_clock_ghz() -> f64 {
    const ITERS: u64 = 50_000_000;
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let k = std::hint::black_box(0x9E37_79B9_7F4A_7C15u64);
        let mut x = std::hint::black_box(1u64);
        let t = Instant::now();
        for _ in 0..ITERS {
            x = x.wrapping_mul(k).wrapping_add(1);
        }
        std::hint::black_box(x);
        best = best.min(t.elapsed().as_secs_f64());
    }
    4.0 * ITERS as f64 / best / 1e9
}

impl F32Peak {
    pub fn flops_per_second(&self) -> f64 {
        (self.cores * self.fma_pipes * self.lanes * 2) as f64 * self.ghz * 1e9
    }

    /// From `/proc/cpuinfo`: lanes from the widest vector FMA flag (avx512f: 16, fma/avx2: 8, else
    /// 4), two FMA pipes (every x86 core with AVX-512 or AVX2 since Haswell/Zen 2 has two; Zen 4
    /// splits 512-bit ops over its two 256-bit pipes, so it counts as 8 lanes), the clock from
    /// `cpu MHz` (the base clock under KVM; a turbo clock makes the real peak higher). `cores` is
    /// the number of threads the benchmark runs with.
    pub fn from_cpuinfo(text: &str, cores: usize) -> Self {
        let field = |name: &str| {
            text.lines()
                .find(|l| l.split(':').next().map(str::trim) == Some(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let flags = field("flags").unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let family: u32 = field("cpu family").and_then(|v| v.parse().ok()).unwrap_or(0);
        let vendor = field("vendor_id").unwrap_or_default();
        // AMD family 25 (Zen 3/4) executes 512-bit FMAs as two 256-bit halves.
        let zen4 = vendor == "AuthenticAMD" && family == 25;
        let lanes = if has("avx512f") && !zen4 {
            16
        } else if has("fma") {
            8
        } else {
            4
        };
        let ghz = field("cpu MHz").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1000.0;
        let model = format!("{} (family {family})", field("model name").unwrap_or_else(|| "unknown CPU".into()));
        Self { cores, lanes, fma_pipes: 2, ghz, cpuinfo_ghz: ghz, measured_ghz: None, model }
    }

    /// From `/proc/cpuinfo`, with the clock measured ([`measure_clock_ghz`]) when it is higher than
    /// the nominal one.
    pub fn detect(cores: usize) -> Result<Self> {
        let mut p =
            Self::from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?, cores);
        let measured = measure_clock_ghz();
        p.measured_ghz = Some(measured);
        p.ghz = p.ghz.max(measured);
        Ok(p)
    }

    pub fn describe(&self) -> String {
        let clock = match self.measured_ghz {
            Some(m) => format!("(measured {m:.2} GHz, cpuinfo {:.2} GHz)", self.cpuinfo_ghz),
            None => "(cpuinfo)".into(),
        };
        format!(
            "{}: {} cores × {} FMA pipes × {} f32 lanes × 2 FLOP × {:.2} GHz {clock} = {:.0} GFLOP/s",
            self.model,
            self.cores,
            self.fma_pipes,
            self.lanes,
            self.ghz,
            self.flops_per_second() / 1e9
        )
    }
}

/// The interleaving and load-gate flags `bench vae` and `bench dit` share.
#[derive(clap::Args, Debug, Clone)]
pub struct InterleaveArgs {
    /// Timed runs per engine, each in a fresh process, engines alternating (A B A B …).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Untimed warm-up processes per engine before the timed ones (page cache, CPU clocks).
    #[arg(long, default_value_t = 1)]
    pub warmup_runs: usize,
    /// CPU threads of each engine (RAYON_NUM_THREADS for Tessera, torch.set_num_threads for
    /// diffusers); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// A row is a comparison only if the 1-minute load average before it is at most this.
    #[arg(long, default_value_t = 1.5)]
    pub max_load: f64,
    /// … and other processes used at most this many cores during every timed run.
    #[arg(long, default_value_t = 0.25)]
    pub max_other_cores: f64,
    /// Seconds to wait before each row for the load average to fall to --max-load.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,
}

impl InterleaveArgs {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1)
    }

    pub fn gate(&self) -> Gate {
        Gate {
            max_load: self.max_load,
            max_other_cores: self.max_other_cores,
            settle: Duration::from_secs(self.settle_secs),
        }
    }

    /// Pins a case process to the benchmark's thread count (both engines read these variables).
    pub fn apply_threads(&self, cmd: &mut Command) {
        let n = self.threads().to_string();
        cmd.env("RAYON_NUM_THREADS", &n).env("OMP_NUM_THREADS", &n).env("MKL_NUM_THREADS", &n);
    }
}

/// Header of the comparison table [`table_row`] fills.
pub const TABLE_HEADER: &str = "| case | Tessera s, median (min–max) | diffusers s, median (min–max) | time Tessera / diffusers \
| Tessera peak GiB | diffusers peak GiB | peak Tessera / diffusers | Tessera % of f32 peak | diffusers % of f32 peak |\n\
|---|---|---|---|---|---|---|---|---|";

fn spread_cell(s: Spread, digits: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
}

/// One markdown row: both engines' median and range of time and peak RSS, the ratios (only when
/// the row is a comparison) and each engine's achieved fraction of the f32 peak for `flops`.
pub fn table_row(case: &str, m: &RowMeasure, flops: Option<f64>, peak: &F32Peak) -> String {
    let ours = m.engine("tessera");
    let theirs = m.engine("diffusers");
    let secs = |e: Option<&EngineRuns>| e.map(|e| spread_cell(e.seconds(), 2)).unwrap_or_else(|| "–".into());
    let gib = |e: Option<&EngineRuns>| e.map(|e| spread_cell(e.peak_gib(), 2)).unwrap_or_else(|| "–".into());
    let fraction = |e: Option<&EngineRuns>| match (e, flops) {
        (Some(e), Some(f)) if peak.flops_per_second() > 0.0 => {
            format!("{:.0} %", 100.0 * f / e.seconds().median / peak.flops_per_second())
        }
        _ => "–".into(),
    };
    let (time_ratio, peak_ratio) = match (ours, theirs) {
        (Some(a), Some(b)) if m.is_comparison() => (
            format!("{:.2}×", a.seconds().median / b.seconds().median),
            format!("{:.2}×", a.peak_gib().median / b.peak_gib().median),
        ),
        (Some(_), Some(_)) => ("not a comparison (busy machine)".into(), "–".into()),
        _ => ("–".into(), "–".into()),
    };
    format!(
        "| {case} | {} | {} | {time_ratio} | {} | {} | {peak_ratio} | {} | {} |",
        secs(ours),
        secs(theirs),
        gib(ours),
        gib(theirs),
        fraction(ours),
        fraction(theirs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_median_min_max() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]), Some(Spread { median: 2.5, min: 1.0, max: 4.0 }));
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn proc_files_parse() -> Result<()> {
        assert_eq!(parse_loadavg("0.58 0.85 1.52 3/812 4242\n")?, [0.58, 0.85, 1.52]);
        let stat = "cpu  100 5 20 1000 7 1 2 3 0 0\ncpu0 50 2 10 500 3 0 1 1 0 0\n";
        assert_eq!(busy_ticks(stat)?, 100 + 5 + 20 + 1 + 2 + 3);
        // A command name with spaces and parentheses must not shift the fields.
        let self_stat = "42 (a b) c) S 1 42 42 0 -1 4194560 10 0 0 0 11 12 13 14 20 0 1 0";
        assert_eq!(own_and_children_ticks(self_stat)?, 11 + 12 + 13 + 14);
        Ok(())
    }

    #[test]
    fn peak_from_cpuinfo() {
        let zen5 = "vendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.000\nflags\t\t: fpu fma avx2 avx512f\n";
        let p = F32Peak::from_cpuinfo(zen5, 2);
        assert_eq!((p.lanes, p.fma_pipes), (16, 2));
        assert!((p.flops_per_second() - 2.0 * 2.0 * 16.0 * 2.0 * 2.596e9).abs() < 1.0);
        let zen4 = zen5.replace("cpu family\t: 26", "cpu family\t: 25");
        assert_eq!(F32Peak::from_cpuinfo(&zen4, 2).lanes, 8);
        let avx2 = zen5.replace(" avx512f", "");
        assert_eq!(F32Peak::from_cpuinfo(&avx2, 2).lanes, 8);
    }
}
