//! Predicted against measured phase peaks: what the tests comparing `tessera plan --json` with
//! `tessera generate --report` share (both list `ranks[].phases[]` with `name` and `peak_bytes`).

/// The planner's bar: every rank's predicted peak in every phase within 10% of the heap peak its
/// worker measured. The terms are exact parameter counts and replays of the code's allocations, so
/// the errors seen are under 2%; what can move a peak between runs is which rank's message is
/// still in flight when a collective peaks, and the worker's own heap (~0.1 MiB).
pub const TOLERANCE: f64 = 0.10;

const MIB: f64 = (1u64 << 20) as f64;

/// `(rank, [(phase, peak bytes)])` in order, from a run report or a plan.
pub type RankPeaks = Vec<(u64, Vec<(String, u64)>)>;

pub fn peaks(v: &serde_json::Value) -> RankPeaks {
    v["ranks"]
        .as_array()
        .expect("ranks")
        .iter()
        .map(|r| {
            let phases = r["phases"].as_array().expect("phases").iter();
            let phases = phases
                .map(|p| (p["name"].as_str().expect("name").to_string(), p["peak_bytes"].as_u64().expect("peak")));
            (r["rank"].as_u64().expect("rank"), phases.collect())
        })
        .collect()
}

/// One rank-phase of a comparison.
#[derive(Debug, Clone)]
pub struct PeakRow {
    pub label: String,
    pub rank: u64,
    pub phase: String,
    pub predicted: u64,
    pub measured: u64,
}

impl PeakRow {
    /// (predicted − measured) / measured.
    pub fn error(&self) -> f64 {
        (self.predicted as f64 - self.measured as f64) / self.measured as f64
    }
}

/// The rows of one run under `label`, after checking that the plan has the job's phases, in the
/// job's order, on every rank.
pub fn rows(label: &str, predicted: &RankPeaks, measured: &RankPeaks) -> Vec<PeakRow> {
    let names = |v: &RankPeaks| -> Vec<(u64, Vec<String>)> {
        v.iter().map(|(r, p)| (*r, p.iter().map(|(n, _)| n.clone()).collect())).collect()
    };
    assert_eq!(names(predicted), names(measured), "{label}: the plan must have the job's phases on every rank");
    let mut rows = Vec::new();
    for ((rank, measured), (_, predicted)) in measured.iter().zip(predicted) {
        for ((phase, m), (_, p)) in measured.iter().zip(predicted) {
            rows.push(PeakRow {
                label: label.to_string(),
                rank: *rank,
                phase: phase.clone(),
                predicted: *p,
                measured: *m,
            });
        }
    }
    rows
}

/// Prints the table and the largest error, then asserts every row within [`TOLERANCE`].
pub fn check(rows: &[PeakRow]) {
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$} {:>4}  {:<13} {:>14} {:>14} {:>8}",
        "plan", "rank", "phase", "predicted MiB", "measured MiB", "error"
    );
    for r in rows {
        println!(
            "{:<width$} {:>4}  {:<13} {:>14.1} {:>14.1} {:>+7.2}%",
            r.label,
            r.rank,
            r.phase,
            r.predicted as f64 / MIB,
            r.measured as f64 / MIB,
            r.error() * 100.0
        );
    }
    let worst = rows.iter().map(|r| r.error().abs()).fold(0.0, f64::max);
    println!("largest |error|: {:.2}% over {} rank-phases", worst * 100.0, rows.len());
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| r.error().abs() > TOLERANCE)
        .map(|r| {
            format!(
                "{}, rank {}, {}: predicted {} B, measured {} B ({:+.1}%)",
                r.label,
                r.rank,
                r.phase,
                r.predicted,
                r.measured,
                r.error() * 100.0
            )
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
