//! What the supervisor tells its caller: live [`JobEvent`]s (for the app's charts and the CLI's
//! progress) and the per-run [`RunReport`] (`--report FILE.json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::protocol::{DenoisePreview, LogLevel, PhaseSpan, VaePiece};
use crate::parallel::Rank;

/// Plain-data events of one run, in arrival order: the one event type the engine emits (the
/// supervisor for a job, the generation session around it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// A step of preparation before (or between) jobs, for people: "starting 2 CPU workers".
    Stage {
        message: String,
    },
    Started {
        world_size: usize,
    },
    Progress {
        rank: Rank,
        step: u64,
        total: u64,
        message: String,
    },
    /// `used_bytes`/`peak_bytes`: heap (counting allocator) on CPU, device memory on CUDA.
    Memory {
        rank: Rank,
        elapsed_secs: f64,
        used_bytes: u64,
        peak_bytes: u64,
        rss_bytes: u64,
        device_total_bytes: Option<u64>,
    },
    PhaseSpan {
        rank: Rank,
        name: String,
        start_secs: f64,
        seconds: f64,
        peak_bytes: u64,
        /// Tracked bytes live when the phase began.
        start_bytes: u64,
    },
    Log {
        rank: Rank,
        level: LogLevel,
        message: String,
    },
    /// A finished VAE tile or slab from `rank` (see [`VaePiece`]).
    VaePiece {
        rank: Rank,
        piece: VaePiece,
    },
    /// The picture the denoise is making, after a step (see [`DenoisePreview`]).
    DenoisePreview {
        rank: Rank,
        preview: DenoisePreview,
    },
    Finished {
        wall_seconds: f64,
    },
    /// `rank` is `None` when the failure is not one rank's (e.g. a cancel timeout).
    Failed {
        rank: Option<Rank>,
        message: String,
    },
    Cancelled,
}

/// One phase in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub start_secs: f64,
    pub seconds: f64,
    pub peak_bytes: u64,
    /// Tracked bytes live when the phase began: `peak_bytes − start_bytes` is the phase's own
    /// working set (activations), with resident weights and earlier buffers aside.
    #[serde(default)]
    pub start_bytes: u64,
}

impl From<&PhaseSpan> for PhaseReport {
    fn from(p: &PhaseSpan) -> Self {
        Self {
            name: p.name.clone(),
            start_secs: p.start_secs,
            seconds: p.seconds,
            peak_bytes: p.peak_bytes,
            start_bytes: p.start_bytes,
        }
    }
}

/// One rank in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankReport {
    pub rank: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub seconds: f64,
    /// Heap peak on CPU (0 if the counting allocator is not installed), device-used peak on CUDA.
    pub peak_bytes: u64,
    pub peak_rss_bytes: u64,
    pub weights_bytes: u64,
    pub phases: Vec<PhaseReport>,
}

/// The `--report FILE.json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub wall_seconds: f64,
    pub ranks: Vec<RankReport>,
}

impl RunReport {
    pub fn to_json(&self) -> String {
        // Serialising plain numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_has_the_documented_fields() {
        let report = RunReport {
            wall_seconds: 1.5,
            ranks: vec![RankReport {
                rank: 1,
                device: "cpu".into(),
                seconds: 1.2,
                peak_bytes: 100,
                peak_rss_bytes: 200,
                weights_bytes: 300,
                phases: vec![PhaseReport {
                    name: "decode".into(),
                    start_secs: 0.1,
                    seconds: 1.0,
                    peak_bytes: 90,
                    start_bytes: 40,
                }],
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["wall_seconds"], 1.5);
        let r = &v["ranks"][0];
        for key in ["rank", "device", "peak_bytes", "weights_bytes", "phases"] {
            assert!(!r[key].is_null(), "missing {key}");
        }
        assert_eq!(r["phases"][0]["seconds"], 1.0);
        assert_eq!(r["phases"][0]["peak_bytes"], 90);
    }
}
