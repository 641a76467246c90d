//! [`GenerationReport`]: the one shape of a generation's `--report` JSON, whatever the plan (a
//! world of one included): the run, the plan, per rank its phases (the sharded text encoder's
//! first), resident weights and its denoise statistics.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::parallel::plan::ParallelPlan;
use crate::runtime::protocol::{GenerateStats, JobOutput};
use crate::runtime::{JobResult, RankReport};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationReport {
    pub model: PathBuf,
    pub plan: ParallelPlan,
    /// From the request to the returned video (worker start and prompt encoding included).
    pub wall_seconds: f64,
    /// Before the generate job: starting the workers (0 when reused) and encoding the prompts.
    pub setup_seconds: f64,
    /// Whether the workers of an earlier run were reused.
    pub world_reused: bool,
    /// The generate job alone, as the supervisor timed it.
    pub job_wall_seconds: f64,
    /// The sharded text encoder's job, when it ran.
    pub text_encoder_wall_seconds: Option<f64>,
    pub ranks: Vec<RankGenerationReport>,
}

/// One rank: the supervisor's `RankReport` fields, then what the generate job measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankGenerationReport {
    #[serde(flatten)]
    pub run: RankReport,
    /// The sharded text encoder's resident bytes on this rank (0 when it ran on the host).
    pub text_encoder_weights_bytes: u64,
    pub denoise: Option<DenoiseReport>,
}

/// A rank's denoise: resident weights, step times and its time inside collectives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenoiseReport {
    #[serde(flatten)]
    pub stats: GenerateStats,
    pub mean_step_seconds: f64,
    /// Time inside collectives / step time.
    pub comm_share: f64,
}

impl DenoiseReport {
    fn new(stats: &GenerateStats) -> Self {
        let total: f64 = stats.step_seconds.iter().sum();
        let comm: f64 = stats.step_comm_seconds.iter().sum();
        let steps = stats.step_seconds.len().max(1) as f64;
        Self {
            stats: stats.clone(),
            mean_step_seconds: total / steps,
            comm_share: if total > 0.0 { comm / total } else { 0.0 },
        }
    }
}

impl GenerationReport {
    /// Joins the generate job's result with the text job's (when the world encoded the prompts).
    pub(crate) fn new(
        model: PathBuf,
        plan: ParallelPlan,
        job: &JobResult,
        text: Option<&JobResult>,
        timing: (f64, f64, bool),
    ) -> Self {
        let (wall_seconds, setup_seconds, world_reused) = timing;
        let ranks = job
            .report
            .ranks
            .iter()
            .enumerate()
            .map(|(r, run)| {
                let text_rank = text.and_then(|t| t.report.ranks.get(r));
                let mut run = run.clone();
                if let Some(t) = text_rank {
                    run.phases.splice(0..0, t.phases.iter().cloned());
                    run.peak_bytes = run.peak_bytes.max(t.peak_bytes);
                    run.peak_rss_bytes = run.peak_rss_bytes.max(t.peak_rss_bytes);
                }
                let denoise = match job.outputs.get(r) {
                    Some(JobOutput::Generate(s)) => Some(DenoiseReport::new(s)),
                    _ => None,
                };
                RankGenerationReport {
                    run,
                    text_encoder_weights_bytes: text_rank.map(|t| t.weights_bytes).unwrap_or(0),
                    denoise,
                }
            })
            .collect();
        Self {
            model,
            plan,
            wall_seconds,
            setup_seconds,
            world_reused,
            job_wall_seconds: job.report.wall_seconds,
            text_encoder_wall_seconds: text.map(|t| t.report.wall_seconds),
            ranks,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain numbers and strings: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
