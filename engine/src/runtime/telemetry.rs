//! Worker-side telemetry: memory samples (~10 Hz while a job runs) and per-job / per-phase peaks.
//!
//! CPU: live and peak heap from the counting allocator ([`crate::alloc`]) plus RSS (sysinfo).
//! CUDA (feature `cuda`): device used/total from `cuMemGetInfo` (whole device), and the peak from the
//! stream-ordered memory pool candle allocates from (cudarc uses `cuMemAllocAsync` on devices with
//! pools): its `RESERVED_MEM_HIGH` high-water mark is exact however short the peak, and is reset at
//! each job and phase start. Device peak = memory outside the pool now (context, cuBLAS workspace,
//! NCCL buffers, other processes) + the pool's reserved high-water. The host heap is reported
//! separately and never mixed into device figures.

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

    /// Device memory, CUDA workers only.
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        #[cfg(feature = "cuda")]
        if let Some(ctx) = &self.cuda {
            let (free, total) = ctx.mem_get_info().ok()?;
            return Some(DeviceMemory {
                used: (total - free) as u64,
                total: total as u64,
                pool: cuda_pool::read(ctx.cu_device()),
            });
        }
        None
    }

    /// Restarts the pool's high-water marks from the current use (a new job or phase).
    pub fn reset_device_peak(&self) {
        #[cfg(feature = "cuda")]
        if let Some(ctx) = &self.cuda {
            cuda_pool::reset_high(ctx.cu_device());
        }
    }
}

/// One reading of a CUDA device's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Whole device, `cuMemGetInfo` (includes other processes).
    pub used: u64,
    pub total: u64,
    /// This process's stream-ordered pool, when the device has one.
    pub pool: Option<PoolMemory>,
}

/// Attributes of a CUDA memory pool (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolMemory {
    /// Held by the pool (live allocations + cached free blocks) / live allocations.
    pub reserved: u64,
    pub used: u64,
    /// High-water marks since the last reset.
    pub reserved_high: u64,
    pub used_high: u64,
}

impl DeviceMemory {
    /// The device's use at the pool's peak since the last reset: what is outside the pool now plus
    /// the pool's reserved high-water (without a pool: the use now).
    pub fn peak(&self) -> u64 {
        match self.pool {
            Some(p) => self.used.saturating_sub(p.reserved) + p.reserved_high.max(p.reserved),
            None => self.used,
        }
    }
}

/// The device's current memory pool through the driver API.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod cuda_pool {
    use cudarc::driver::sys::{self, CUmemPool_attribute as Attr};

    use super::PoolMemory;

    fn pool(dev: sys::CUdevice) -> Option<sys::CUmemoryPool> {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer; `dev` came from a live context of this process.
        let ok = unsafe { sys::cuDeviceGetMemPool(&mut pool, dev) } == sys::CUresult::CUDA_SUCCESS;
        (ok && !pool.is_null()).then_some(pool)
    }

    fn get(pool: sys::CUmemoryPool, attr: Attr) -> Option<u64> {
        let mut v: u64 = 0;
        // SAFETY: these four attributes are `cuuint64_t` (u64) values per the driver API.
        let r = unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) };
        (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
    }

    pub fn read(dev: sys::CUdevice) -> Option<PoolMemory> {
        let p = pool(dev)?;
        Some(PoolMemory {
            reserved: get(p, Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
            used: get(p, Attr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            reserved_high: get(p, Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
            used_high: get(p, Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        })
    }

    pub fn reset_high(dev: sys::CUdevice) {
        let Some(p) = pool(dev) else { return };
        for attr in [Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH] {
            let mut zero: u64 = 0;
            // SAFETY: the high-water attributes take a `cuuint64_t`; 0 is the documented reset
            // (the mark restarts from the current value).
            let _ = unsafe { sys::cuMemPoolSetAttribute(p, attr, (&mut zero as *mut u64).cast()) };
        }
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

    /// Reads the device and folds its peak since the last reset into the running peak.
    fn device_used(&self) -> Option<DeviceMemory> {
        let mem = self.sampler.lock().ok()?.device_memory();
        if let Some(m) = mem {
            self.device_peak.observe(m.peak());
        }
        mem
    }

    /// Folds the peak so far, restarts the pool's high-water marks, and returns the use now.
    fn device_scope_start(&self) -> u64 {
        let current = self.device_used().map(|m| m.used).unwrap_or(0);
        if let Ok(sampler) = self.sampler.lock() {
            sampler.reset_device_peak();
        }
        current
    }

    pub fn start_job(&self, job_id: JobId) {
        let current_device = self.device_scope_start();
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
                device_used_bytes: device.map(|m| m.used),
                device_total_bytes: device.map(|m| m.total),
                // The running peak (this job's, or the open phase's folded in).
                device_peak_bytes: device.map(|_| self.device_peak.0.load(Ordering::Relaxed)),
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
        let current_device = self.device_scope_start();
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

    /// The device peak adds what lives outside the pool now to the pool's high-water mark.
    #[test]
    fn device_peak_from_the_pool_high_water() {
        let pool = PoolMemory { reserved: 6, used: 4, reserved_high: 10, used_high: 9 };
        let m = DeviceMemory { used: 8, total: 100, pool: Some(pool) };
        assert_eq!(m.peak(), 2 + 10);
        assert_eq!(DeviceMemory { pool: None, ..m }.peak(), 8);
    }

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
        sampler.reset_device_peak();
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
