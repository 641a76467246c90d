//! Finished runs, kept for the Compare panel: what ran (preset, model, size, plan) and what it cost
//! (per rank: peak memory per phase, time per phase). Persisted as one JSON file in the data dir,
//! so comparisons survive restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_engine::api::{write_file_atomic, ParallelPlan, RankReport, RunReport};

/// One finished run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Increasing number, unique within the file.
    pub id: u64,
    /// Seconds since the Unix epoch at the end of the run.
    pub finished_unix_secs: u64,
    /// The job that ran ("generate").
    pub job: String,
    pub preset: Option<String>,
    /// Model folder name (or "demo").
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub plan: ParallelPlan,
    pub report: RunReport,
}

impl RunRecord {
    /// "#3 demo 256×192×9, 2 ranks (halo)".
    pub fn title(&self) -> String {
        format!(
            "#{} {} {}×{}×{}, {} rank{} ({})",
            self.id,
            self.preset.as_deref().unwrap_or(&self.model),
            self.width,
            self.height,
            self.frames,
            self.plan.ranks,
            if self.plan.ranks == 1 { "" } else { "s" },
            self.plan.vae_mode
        )
    }

    /// The largest peak over ranks.
    pub fn max_peak_bytes(&self) -> u64 {
        self.report.ranks.iter().map(|r| r.peak_bytes.max(phase_peak(r))).max().unwrap_or(0)
    }

    /// Seconds per phase name, the slowest rank's, in first-seen order.
    pub fn phase_seconds(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for r in &self.report.ranks {
            for p in &r.phases {
                match out.iter_mut().find(|(n, _)| *n == p.name) {
                    Some((_, s)) => *s = s.max(p.seconds),
                    None => out.push((p.name.clone(), p.seconds)),
                }
            }
        }
        out
    }
}

fn phase_peak(r: &RankReport) -> u64 {
    r.phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0)
}

/// All recorded runs and the file they live in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunLog {
    pub runs: Vec<RunRecord>,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct RunFile {
    runs: Vec<RunRecord>,
}

impl RunLog {
    /// Reads `path` (an absent file is an empty log; an unreadable one is an error to show).
    pub fn load(path: &Path) -> Result<Self, String> {
        let runs = match std::fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str::<RunFile>(&text)
                    .map_err(|e| {
                        format!("the run history is unreadable ({e}); it will be replaced: {}", path.display())
                    })?
                    .runs
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read the run history ({e}): {}", path.display())),
        };
        Ok(Self { runs, path: Some(path.to_path_buf()) })
    }

    /// A log that is not saved anywhere (no data dir).
    pub fn in_memory() -> Self {
        Self::default()
    }

    pub fn next_id(&self) -> u64 {
        self.runs.iter().map(|r| r.id).max().unwrap_or(0) + 1
    }

    /// Adds `record` and rewrites the file atomically.
    pub fn add(&mut self, record: RunRecord) -> Result<(), String> {
        self.runs.push(record);
        self.save()
    }

    pub fn remove(&mut self, id: u64) -> Result<(), String> {
        self.runs.retain(|r| r.id != id);
        self.save()
    }

    fn save(&self) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let text = serde_json::to_string_pretty(&RunFile { runs: self.runs.clone() }).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_file_atomic(path, |tmp| std::fs::write(tmp, &text).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot save the run history: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_engine::api::PhaseReport;

    fn record(id: u64) -> RunRecord {
        let phase = |name: &str, seconds: f64, peak_bytes: u64| PhaseReport {
            name: name.into(),
            start_secs: 0.0,
            seconds,
            peak_bytes,
            start_bytes: 0,
        };
        RunRecord {
            id,
            finished_unix_secs: 1,
            job: "vae decode".into(),
            preset: None,
            model: "demo".into(),
            width: 256,
            height: 192,
            frames: 9,
            plan: ParallelPlan::default(),
            report: RunReport {
                wall_seconds: 2.0,
                ranks: vec![
                    RankReport {
                        rank: 0,
                        device: "cpu".into(),
                        seconds: 1.0,
                        peak_bytes: 10,
                        peak_rss_bytes: 0,
                        weights_bytes: 0,
                        phases: vec![phase("load", 0.5, 5), phase("decode", 1.0, 40)],
                    },
                    RankReport {
                        rank: 1,
                        device: "cpu".into(),
                        seconds: 1.0,
                        peak_bytes: 20,
                        peak_rss_bytes: 0,
                        weights_bytes: 0,
                        phases: vec![phase("load", 0.7, 5), phase("decode", 0.9, 30)],
                    },
                ],
            },
        }
    }

    #[test]
    fn runs_persist_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/runs.json");
        let mut log = RunLog::load(&path).unwrap();
        assert!(log.runs.is_empty());
        log.add(record(log.next_id())).unwrap();
        log.add(record(log.next_id())).unwrap();
        let back = RunLog::load(&path).unwrap();
        assert_eq!(back.runs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        let mut back = back;
        back.remove(1).unwrap();
        assert_eq!(RunLog::load(&path).unwrap().runs.len(), 1);
        std::fs::write(&path, "{not json").unwrap();
        assert!(RunLog::load(&path).unwrap_err().contains("unreadable"));
    }

    #[test]
    fn summaries_take_the_worst_rank() {
        let r = record(1);
        assert_eq!(r.max_peak_bytes(), 40);
        assert_eq!(r.phase_seconds(), vec![("load".to_string(), 0.7), ("decode".to_string(), 1.0)]);
        assert_eq!(r.title(), "#1 demo 256×192×9, 1 rank (halo)");
    }
}
