//! Worker-side telemetry: memory samples (~10 Hz while a job runs) and per-job / per-phase peaks.
//!
//! CPU: live and peak heap from the counting allocator ([`crate::alloc`]) plus RSS (sysinfo).
//! CUDA (feature `cuda`): device used/total from `cuMemGetInfo` (whole device: one worker per GPU).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::protocol::{DeviceKind, JobId, MemorySample, RankSummary};
use crate::alloc;

/// Sampling period of the telemetry thread.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// Reads the process's memory figures.
pub struct Sampler {
    sys: Option<System>,
    pid: Option<Pid>,
    #[cfg(feature = "cuda")]
    cuda: Option<std::sync::Arc<cudarc::driver::CudaContext>>,
}

impl Sampler {
    pub fn new(device: DeviceKind, ordinal: usize) -> Self {
        let _ = (device, ordinal);
        Self {
            sys: System::new().ok(),
            pid: sysinfo::get_current_pid().ok(),
            #[cfg(feature = "cuda")]
            cuda: match device {
                DeviceKind::Cuda => cudarc::driver::CudaContext::new(ordinal).ok(),
                DeviceKind::Cpu => None,
            },
        }
    }

    /// Resident set size of this process (0 if unavailable).
    pub fn rss_bytes(&mut self) -> u64 {
        let (Some(sys), Some(pid)) = (self.sys.as_mut(), self.pid) else { return 0 };
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        sys.process(pid).map(|p| p.memory()).unwrap_or(0)
    }

    /// `(used, total)` device memory, CUDA workers only.
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        #[cfg(feature = "cuda")]
        if let Some(ctx) = &self.cuda {
            return ctx.mem_get_info().ok().map(|(free, total)| ((total - free) as u64, total as u64));
        }
        None
    }
}

/// A peak that can be scoped like the allocator's (save the outer value, reset, fold back).
#[derive(Debug, Default)]
struct PeakCell(AtomicU64);

impl PeakCell {
    fn observe(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
    fn begin(&self, current: u64) -> u64 {
        self.0.swap(current, Ordering::Relaxed)
    }
    fn end(&self, outer: u64) -> u64 {
        self.0.fetch_max(outer, Ordering::Relaxed)
    }
}

struct ActiveJob {
    job_id: JobId,
    started: Instant,
    heap_outer_peak: u64,
    device_outer_peak: u64,
    peak_rss: u64,
}

/// Shared between a worker's telemetry thread and its job thread.
pub struct Telemetry {
    sampler: Mutex<Sampler>,
    device_peak: PeakCell,
    active: Mutex<Option<ActiveJob>>,
    weights_bytes: AtomicU64,
}

/// Opaque token of an open phase (see [`Telemetry::begin_phase`]).
pub struct PhaseToken {
    started: Instant,
    start_bytes: u64,
    heap_outer_peak: u64,
    device_outer_peak: u64,
}

impl Telemetry {
    pub fn new(sampler: Sampler) -> Self {
        Self {
            sampler: Mutex::new(sampler),
            device_peak: PeakCell::default(),
            active: Mutex::new(None),
            weights_bytes: AtomicU64::new(0),
        }
    }

    fn device_used(&self) -> Option<(u64, u64)> {
        let mem = self.sampler.lock().ok()?.device_memory();
        if let Some((used, _)) = mem {
            self.device_peak.observe(used);
        }
        mem
    }

    pub fn start_job(&self, job_id: JobId) {
        let current_device = self.device_used().map(|(u, _)| u).unwrap_or(0);
        let job = ActiveJob {
            job_id,
            started: Instant::now(),
            heap_outer_peak: alloc::begin_peak_scope(),
            device_outer_peak: self.device_peak.begin(current_device),
            peak_rss: 0,
        };
        self.weights_bytes.store(0, Ordering::Relaxed);
        if let Ok(mut active) = self.active.lock() {
            *active = Some(job);
        }
    }

    pub fn add_weights_bytes(&self, bytes: u64) {
        self.weights_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One sample for the running job, if any.
    pub fn sample(&self) -> Option<(JobId, MemorySample)> {
        let device = self.device_used();
        let rss = self.sampler.lock().ok()?.rss_bytes();
        let mut active = self.active.lock().ok()?;
        let job = active.as_mut()?;
        job.peak_rss = job.peak_rss.max(rss);
        let heap = alloc::stats();
        Some((
            job.job_id,
            MemorySample {
                elapsed_secs: job.started.elapsed().as_secs_f64(),
                heap_live_bytes: heap.live_bytes,
                heap_peak_bytes: heap.peak_bytes,
                rss_bytes: rss,
                device_used_bytes: device.map(|(u, _)| u),
                device_total_bytes: device.map(|(_, t)| t),
            },
        ))
    }

    /// Ends the job's scopes and returns its totals.
    pub fn finish_job(&self) -> RankSummary {
        let device = self.device_used();
        let rss = self.sampler.lock().map(|mut s| s.rss_bytes()).unwrap_or(0);
        let Some(job) = self.active.lock().ok().and_then(|mut a| a.take()) else { return RankSummary::default() };
        let heap_peak = alloc::end_peak_scope(job.heap_outer_peak);
        let device_peak = self.device_peak.end(job.device_outer_peak);
        RankSummary {
            seconds: job.started.elapsed().as_secs_f64(),
            peak_bytes: if device.is_some() { device_peak } else { heap_peak },
            peak_rss_bytes: job.peak_rss.max(rss),
            weights_bytes: self.weights_bytes.load(Ordering::Relaxed),
        }
    }

    /// Seconds since the running job started (0 when idle).
    pub fn job_elapsed_secs(&self) -> f64 {
        self.active.lock().ok().and_then(|a| a.as_ref().map(|j| j.started.elapsed().as_secs_f64())).unwrap_or(0.0)
    }

    pub fn begin_phase(&self) -> PhaseToken {
        let current_device = self.device_used().map(|(u, _)| u).unwrap_or(0);
        let start_bytes = if current_device > 0 { current_device } else { alloc::stats().live_bytes };
        PhaseToken {
            started: Instant::now(),
            start_bytes,
            heap_outer_peak: alloc::begin_peak_scope(),
            device_outer_peak: self.device_peak.begin(current_device),
        }
    }

    /// `(seconds, peak bytes, bytes live at the start)` of a phase: heap on CPU, device-used on CUDA.
    /// `peak − start` is what the phase itself added (its activations, with the weights aside).
    pub fn end_phase(&self, token: PhaseToken) -> (f64, u64, u64) {
        let device = self.device_used();
        let heap_peak = alloc::end_peak_scope(token.heap_outer_peak);
        let device_peak = self.device_peak.end(token.device_outer_peak);
        let peak = if device.is_some() { device_peak } else { heap_peak };
        (token.started.elapsed().as_secs_f64(), peak, token.start_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_cells_nest() {
        let cell = PeakCell::default();
        cell.observe(10);
        let outer = cell.begin(3);
        cell.observe(7);
        assert_eq!(cell.end(outer), 7);
        assert_eq!(cell.0.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn sampler_reads_rss_and_idle_telemetry_is_silent() {
        let mut sampler = Sampler::new(DeviceKind::Cpu, 0);
        assert!(sampler.rss_bytes() > 0);
        assert_eq!(sampler.device_memory(), None);
        let t = Telemetry::new(sampler);
        assert!(t.sample().is_none());
        t.start_job(JobId(1));
        t.add_weights_bytes(5);
        let (id, s) = t.sample().unwrap();
        assert_eq!(id, JobId(1));
        assert!(s.rss_bytes > 0);
        let summary = t.finish_job();
        assert_eq!(summary.weights_bytes, 5);
        assert!(summary.peak_rss_bytes > 0);
        assert!(t.sample().is_none());
    }
}
