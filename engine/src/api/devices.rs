//! Devices: what this machine can run on — the CPU, the NVIDIA driver's GPUs and what the worker
//! executable can drive (`tessera doctor`, the studio's device list). Named re-exports of
//! [`crate::runtime::doctor`].

pub use crate::runtime::doctor::{probe, CpuReport, DoctorReport, GpuReport, NvmlReport, WorkerProbe, WorkerReport};
