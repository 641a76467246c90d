//! `tessera doctor`: what devices this machine has, seen three ways without linking CUDA into the
//! caller: the host (sysinfo), the NVIDIA driver (NVML, dlopened by nvml-wrapper: absent driver =
//! clean error), and the worker executable (`tessera-worker --doctor`, which in a `cuda` build reports
//! CUDA devices, compute capability, the NCCL version and the peer-to-peer access matrix).
//!
//! The worker's CUDA probe (`cuda`, feature `cuda`) lives here, next to the report it fills, rather
//! than in the NCCL comm backend: probing devices is not a collective.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::launch::resolve_worker_exe;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    pub brand: String,
    pub logical_cores: usize,
    pub physical_cores: Option<usize>,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuReport {
    pub index: usize,
    pub name: String,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: Option<u64>,
    /// e.g. "9.0".
    pub compute_capability: Option<String>,
}

/// The driver's view (NVML).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlReport {
    /// Why NVML could not be used (no driver, no GPU); `None` when it worked.
    pub error: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuReport>,
    /// `p2p[i][j]`: NVML peer-to-peer read status between GPU i and j ("ok" or the reason).
    pub p2p: Vec<Vec<String>>,
}

/// What `tessera-worker --doctor` prints (JSON on stdout).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerProbe {
    pub version: String,
    pub cuda_built: bool,
    pub cuda_error: Option<String>,
    pub cuda_devices: Vec<GpuReport>,
    pub nccl_version: Option<String>,
    /// `p2p[i][j]`: `cuDeviceCanAccessPeer(i, j)`.
    pub p2p: Vec<Vec<bool>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub exe: Option<PathBuf>,
    pub probe: Option<WorkerProbe>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub cpu: CpuReport,
    pub nvml: NvmlReport,
    pub worker: WorkerReport,
}

/// The worker's own probe (runs inside `tessera-worker --doctor`).
pub fn worker_probe() -> WorkerProbe {
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut probe = WorkerProbe { version: env!("CARGO_PKG_VERSION").into(), ..Default::default() };
    #[cfg(feature = "cuda")]
    {
        probe.cuda_built = true;
        match cuda::probe_devices() {
            Ok((devices, p2p)) => {
                probe.cuda_devices = devices;
                probe.p2p = p2p;
            }
            Err(e) => probe.cuda_error = Some(e),
        }
        probe.nccl_version = cuda::nccl_version();
    }
    probe
}

/// The CUDA driver's and NCCL's view from inside a worker (only `tessera-worker` links CUDA).
#[cfg(feature = "cuda")]
mod cuda {
    // `cuDeviceCanAccessPeer` has no safe wrapper in cudarc; it is called through the raw driver FFI.
    #![allow(unsafe_code)]

    use cudarc::driver::CudaContext;

    use super::GpuReport;

    /// "2.28.9", from `ncclGetVersion`.
    pub fn nccl_version() -> Option<String> {
        let v = cudarc::nccl::result::get_nccl_version().ok()?;
        Some(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
    }

    /// CUDA devices as this process sees them, and `cuDeviceCanAccessPeer` between each pair.
    pub fn probe_devices() -> Result<(Vec<GpuReport>, Vec<Vec<bool>>), String> {
        let n = CudaContext::device_count().map_err(|e| format!("cuDeviceGetCount: {e:?}"))? as usize;
        let mut reports = Vec::with_capacity(n);
        let mut contexts = Vec::with_capacity(n);
        for index in 0..n {
            let ctx = CudaContext::new(index).map_err(|e| format!("cuda:{index}: {e:?}"))?;
            let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
            reports.push(GpuReport {
                index,
                name: ctx.name().unwrap_or_default(),
                mem_total_bytes: total as u64,
                mem_used_bytes: Some((total - free) as u64),
                compute_capability: ctx.compute_capability().ok().map(|(major, minor)| format!("{major}.{minor}")),
            });
            contexts.push(ctx);
        }
        let p2p = contexts.iter().map(|a| contexts.iter().map(|b| can_access_peer(a, b)).collect()).collect();
        Ok((reports, p2p))
    }

    /// Whether `a` can map `b`'s memory (a device can always access itself).
    fn can_access_peer(a: &CudaContext, b: &CudaContext) -> bool {
        if a.ordinal() == b.ordinal() {
            return true;
        }
        let mut can: std::ffi::c_int = 0;
        // SAFETY: both `CUdevice` handles come from contexts that are alive for this call (the
        // driver is initialised), and `can` is a valid, writable `c_int` for the out-parameter.
        let status = unsafe { cudarc::driver::sys::cuDeviceCanAccessPeer(&mut can, a.cu_device(), b.cu_device()) };
        status == cudarc::driver::sys::CUresult::CUDA_SUCCESS && can == 1
    }
}

pub fn cpu_report() -> CpuReport {
    let mut report = CpuReport {
        logical_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        physical_cores: sysinfo::System::physical_core_count().ok(),
        ..Default::default()
    };
    if let Ok(mut sys) = sysinfo::System::new() {
        sys.refresh_memory();
        sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        report.ram_total_bytes = sys.total_memory();
        report.ram_available_bytes = sys.available_memory();
        report.brand = sys.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default();
    }
    report
}

pub fn nvml_report() -> NvmlReport {
    use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus};
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            return NvmlReport {
                error: Some(format!("NVML unavailable (no NVIDIA driver?): {e}")),
                ..Default::default()
            }
        }
    };
    let mut report = NvmlReport {
        driver_version: nvml.sys_driver_version().ok(),
        cuda_driver_version: nvml.sys_cuda_driver_version().ok().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
        ..Default::default()
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            report.error = Some(format!("NVML device count: {e}"));
            return report;
        }
    };
    let devices: Vec<_> = (0..count).filter_map(|i| nvml.device_by_index(i).ok()).collect();
    for (index, d) in devices.iter().enumerate() {
        let mem = d.memory_info().ok();
        report.gpus.push(GpuReport {
            index,
            name: d.name().unwrap_or_default(),
            mem_total_bytes: mem.as_ref().map(|m| m.total).unwrap_or(0),
            mem_used_bytes: mem.as_ref().map(|m| m.used),
            compute_capability: d.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor)),
        });
    }
    report.p2p = devices
        .iter()
        .map(|a| {
            devices
                .iter()
                .map(|b| match a.p2p_status(b, P2pCapabilitiesIndex::Read) {
                    Ok(P2pStatus::Ok) => "ok".to_string(),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("error: {e}"),
                })
                .collect()
        })
        .collect();
    if report.gpus.is_empty() {
        report.error = Some("the NVIDIA driver is loaded but reports no GPU".into());
    }
    report
}

/// Runs `tessera-worker --doctor` and parses its JSON.
pub fn worker_report(worker_exe: Option<&Path>) -> WorkerReport {
    let exe = match resolve_worker_exe(worker_exe) {
        Ok(exe) => exe,
        Err(e) => return WorkerReport { error: Some(e.to_string()), ..Default::default() },
    };
    let result = Command::new(&exe).arg("--doctor").output();
    let mut report = WorkerReport { exe: Some(exe), ..Default::default() };
    match result {
        Err(e) => report.error = Some(format!("cannot run the worker: {e}")),
        Ok(out) if !out.status.success() => {
            let status = super::supervisor::describe_status(out.status);
            let stderr = String::from_utf8_lossy(&out.stderr);
            // A CUDA build links libcuda; without the driver the loader refuses it (exit code 127).
            report.error = Some(format!("the worker failed ({status}): {}", stderr.trim()));
        }
        Ok(out) => match serde_json::from_slice::<WorkerProbe>(&out.stdout) {
            Ok(probe) => report.probe = Some(probe),
            Err(e) => report.error = Some(format!("unreadable worker report: {e}")),
        },
    }
    report
}

pub fn probe(worker_exe: Option<&Path>) -> DoctorReport {
    DoctorReport { cpu: cpu_report(), nvml: nvml_report(), worker: worker_report(worker_exe) }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

impl DoctorReport {
    /// Human-readable text for the CLI.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = &self.cpu;
        s += &format!(
            "CPU    {} — {} logical cores{}, RAM {:.1} GiB total, {:.1} GiB available\n",
            if c.brand.is_empty() { "unknown" } else { &c.brand },
            c.logical_cores,
            c.physical_cores.map(|p| format!(" ({p} physical)")).unwrap_or_default(),
            gib(c.ram_total_bytes),
            gib(c.ram_available_bytes)
        );
        let n = &self.nvml;
        match &n.error {
            Some(e) if n.gpus.is_empty() => s += &format!("GPU    none: {e}\n"),
            _ => {
                s += &format!(
                    "Driver {} (CUDA {})\n",
                    n.driver_version.as_deref().unwrap_or("?"),
                    n.cuda_driver_version.as_deref().unwrap_or("?")
                );
                for g in &n.gpus {
                    s += &format!(
                        "GPU {}  {} — {:.1} GiB ({:.1} GiB used), compute capability {}\n",
                        g.index,
                        g.name,
                        gib(g.mem_total_bytes),
                        gib(g.mem_used_bytes.unwrap_or(0)),
                        g.compute_capability.as_deref().unwrap_or("?")
                    );
                }
                if n.p2p.len() > 1 {
                    s += "P2P (NVML read):\n";
                    for (i, row) in n.p2p.iter().enumerate() {
                        s += &format!("  {i}: {}\n", row.join(" "));
                    }
                }
            }
        }
        let w = &self.worker;
        let exe = w.exe.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "not found".into());
        match (&w.probe, &w.error) {
            (Some(p), _) if !p.cuda_built => {
                s += &format!("Worker {exe}: CPU build (no CUDA); runs CPU ranks only\n");
            }
            (Some(p), _) => {
                s +=
                    &format!("Worker {exe}: CUDA build, NCCL {}\n", p.nccl_version.as_deref().unwrap_or("unavailable"));
                if let Some(e) = &p.cuda_error {
                    s += &format!("  CUDA error: {e}\n");
                }
                for g in &p.cuda_devices {
                    s += &format!(
                        "  cuda:{} {} — {:.1} GiB, sm {}\n",
                        g.index,
                        g.name,
                        gib(g.mem_total_bytes),
                        g.compute_capability.as_deref().unwrap_or("?")
                    );
                }
                if p.p2p.len() > 1 {
                    s += "  P2P access (cuDeviceCanAccessPeer):\n";
                    for (i, row) in p.p2p.iter().enumerate() {
                        let cells: Vec<&str> = row.iter().map(|&ok| if ok { "yes" } else { "no" }).collect();
                        s += &format!("    {i}: {}\n", cells.join(" "));
                    }
                }
            }
            (None, Some(e)) => s += &format!("Worker {exe}: {e}\n"),
            (None, None) => s += &format!("Worker {exe}: no report\n"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_report_sees_this_machine_and_nvml_absence_is_clean() {
        let cpu = cpu_report();
        assert!(cpu.logical_cores >= 1 && cpu.ram_total_bytes > 0, "{cpu:?}");
        // On machines without a driver NVML must fail with a message, not a panic; with one it
        // lists GPUs. Either way the rendered text says which.
        let report = DoctorReport { cpu, nvml: nvml_report(), worker: WorkerReport::default() };
        let text = report.render();
        assert!(text.starts_with("CPU"), "{text}");
        assert!(text.contains("GPU"), "{text}");
    }
}
