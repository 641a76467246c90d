//! Parity of the UniPC (flow) and FlowMatchEuler schedulers with diffusers 0.42.1, against
//! `tests/fixtures/golden{,-seed1}/scheduler` (written by `gen.py`): the timestep and sigma tables,
//! then every step of a 10-step (shift 5) and a 7-step (shift 3) run where the "model" is `sin(sample·(i+1)) + 0.1·i`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tessera_engine::scheduler::{
    FlowMatchEulerConfig, FlowMatchEulerScheduler, FlowUniPcConfig, FlowUniPcScheduler, Scheduler,
};
use tessera_engine::tensor_io;

/// Both golden sets: seed 0 (shift 5, 10 steps) and seed 1 (shift 3, 7 steps).
const GOLDEN: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/scheduler"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden-seed1/scheduler"),
];

/// Max-abs and relative (‖a−b‖/‖b‖) error.
fn errors(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let diff = (ours - reference).expect("same shape");
    let max_abs = diff.abs().and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>());
    let norm = |t: &Tensor| t.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("norm").sqrt();
    (max_abs.expect("max"), norm(&diff) / norm(reference).max(f32::MIN_POSITIVE))
}

fn golden(dir: &str) -> (serde_json::Value, HashMap<String, Tensor>) {
    println!("{dir}");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("case.json")).expect("case.json"))
            .expect("case.json parses");
    let outputs = tensor_io::read_all(&Path::new(dir).join("outputs.safetensors"), &Device::Cpu).expect("outputs");
    (case, outputs)
}

/// Runs `sched` over the golden case and checks tables and every step.
fn check(name: &str, sched: &mut dyn Scheduler, steps: usize, out: &HashMap<String, Tensor>) {
    sched.set_timesteps(steps).expect("set_timesteps");
    let ts = Tensor::new(sched.timesteps(), &Device::Cpu).expect("timesteps");
    let sig = Tensor::new(sched.sigmas(), &Device::Cpu).expect("sigmas");
    let (ts_abs, _) = errors(&ts, &out[&format!("{name}_timesteps")]);
    let (sig_abs, _) = errors(&sig, &out[&format!("{name}_sigmas")]);
    println!("{name}: timesteps max-abs {ts_abs:e}, sigmas max-abs {sig_abs:e}");
    // Both tables are float32 roundings of the same float64 computation (UniPC timesteps are
    // integers): they must agree to the last bit, allowing one f32 ulp of ~1000 for Euler's t.
    assert!(ts_abs <= 1e-4, "{name} timesteps differ by {ts_abs}");
    assert!(sig_abs <= 1e-7, "{name} sigmas differ by {sig_abs}");

    let mut sample = out[&format!("{name}_init")].clone();
    for i in 0..steps {
        let model_out = ((&sample * (i + 1) as f64).and_then(|x| x.sin()).and_then(|x| x + 0.1 * i as f64))
            .expect("model stand-in");
        sample = sched.step(&model_out, i, &sample).expect("step");
        let reference = &out[&format!("{name}_step{i}")];
        let (max_abs, rel) = errors(&sample, reference);
        println!("{name} step {i}: max-abs {max_abs:e}, relative {rel:e}");
        // Pure f32 scalar arithmetic on both sides: differences are a few ulps that the
        // multistep history carries along, far below 1e-5 relative.
        assert!(rel <= 1e-5, "{name} step {i}: relative error {rel} (max-abs {max_abs})");
    }
}

#[test]
fn unipc_flow_every_step_matches_diffusers() {
    for dir in GOLDEN {
        let (case, out) = golden(dir);
        let cfg: FlowUniPcConfig = serde_json::from_value(case["unipc_config"].clone()).expect("unipc config");
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let mut sched = FlowUniPcScheduler::new(cfg).expect("valid UniPC config");
        check("unipc", &mut sched, steps, &out);
    }
}

#[test]
fn flow_match_euler_every_step_matches_diffusers() {
    for dir in GOLDEN {
        let (case, out) = golden(dir);
        let cfg: FlowMatchEulerConfig = serde_json::from_value(case["euler_config"].clone()).expect("euler config");
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let mut sched = FlowMatchEulerScheduler::new(cfg).expect("valid Euler config");
        check("euler", &mut sched, steps, &out);
    }
}

#[test]
fn unipc_last_step_returns_the_x0_prediction_exactly() {
    // With final_sigmas_type "zero" the last update is the data prediction x0 = x − σ·v of the
    // sample handed in (diffusers converts before correcting), bit for bit: no noise is left.
    let mut sched = FlowUniPcScheduler::new(FlowUniPcConfig::wan(3.0)).expect("valid config");
    sched.set_timesteps(3).expect("set_timesteps");
    let mut x = Tensor::new(&[0.3f32, -1.2, 0.7, 2.0], &Device::Cpu).expect("x");
    for i in 0..2 {
        x = sched.step(&x.sin().expect("v"), i, &x).expect("step");
    }
    let v = (x.cos().expect("v") * 0.5).expect("v");
    let sigma = sched.sigmas()[2] as f64;
    let x0 = (&x - v.affine(sigma, 0.0).expect("σv")).expect("x0").to_vec1::<f32>().expect("vec");
    let last = sched.step(&v, 2, &x).expect("last step").to_vec1::<f32>().expect("vec");
    assert_eq!(last, x0);
}
