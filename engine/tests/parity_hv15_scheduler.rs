//! The HunyuanVideo 1.5 schedule: `FlowMatchEulerDiscreteScheduler(shift=5/7/9).set_timesteps(
//! sigmas=linspace(1, 0, n+1)[:-1])` as both pipelines call it, and 8 Euler steps, against
//! diffusers (`tests/fixtures/hv15/scheduler`, copied from the shared golden `hv15/scheduler`).
//!
//! Tolerance: the tables are computed with diffusers' f32 arithmetic and must be equal to 1 ulp
//! (1e-6 relative); the steps to f32 rounding (1e-6 relative).

mod common;

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use tessera_engine::scheduler::flow_match_euler::linear_sigmas;
use tessera_engine::scheduler::{FlowMatchEulerConfig, FlowMatchEulerScheduler, Scheduler};
use tessera_engine::tensor_io;

#[test]
fn hv15_schedule_and_steps_match_diffusers() {
    let dev = Device::Cpu;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/scheduler");
    let o = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    for shift in [5, 7, 9] {
        for n in [8, 50] {
            let mut s =
                FlowMatchEulerScheduler::new(FlowMatchEulerConfig { shift: shift as f64, ..Default::default() })
                    .unwrap();
            s.set_sigmas(&linear_sigmas(n)).unwrap();
            let t = Tensor::new(s.timesteps(), &dev).unwrap();
            let sig = Tensor::new(s.sigmas(), &dev).unwrap();
            assert_close(&format!("timesteps shift {shift} n {n}"), &t, &o[&format!("timesteps_s{shift}_n{n}")], 1e-6);
            assert_close(&format!("sigmas shift {shift} n {n}"), &sig, &o[&format!("sigmas_s{shift}_n{n}")], 1e-6);
            // bf16 pipelines feed the model t rounded to bf16; the step keeps the f32 sigmas.
            let bf = t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
            assert_close(
                &format!("bf16 timesteps shift {shift} n {n}"),
                &bf,
                &o[&format!("timesteps_bf16_s{shift}_n{n}")],
                0.0,
            );
        }
        let mut s =
            FlowMatchEulerScheduler::new(FlowMatchEulerConfig { shift: shift as f64, ..Default::default() }).unwrap();
        s.set_sigmas(&linear_sigmas(8)).unwrap();
        let mut x = o[&format!("init_s{shift}")].clone();
        for i in 0..8 {
            let out = ((&x * (i + 1) as f64).unwrap().sin().unwrap() + 0.1 * i as f64).unwrap();
            x = s.step(&out, i, &x).unwrap();
            assert_close(&format!("shift {shift} step {i}"), &x, &o[&format!("step{i}_s{shift}")], 1e-6);
        }
    }
}
