//! The schedulers on every configuration of the sweep (`tests/fixtures/sweep/scheduler`: UniPC in
//! flow mode with shifts 1–12, 1–50 steps, order 1/2, bh1/bh2, with and without
//! `lower_order_final`, final sigma zero or `sigma_min`, disabled correctors, `shift_terminal`;
//! FlowMatchEuler with shifts 0.5–8, 1–30 steps, `shift_terminal`), each built from the
//! `scheduler_config.json` diffusers saved: timestep and sigma tables, then every step of a run
//! whose "model" is `sin(sample·(1 + i mod 3)) + 0.1·i` (a gentler slope than the golden case's
//! `sin(sample·(i+1))`, so that 50-step runs stay well conditioned: the generator checks that
//! diffusers' own f32 and f64 runs agree within 1e-6 on every case).
//!
//! Tolerances: tables are f32 roundings of the same f64 computation (UniPC timesteps are integers):
//! 1e-4 absolute on timesteps up to 1000 (one f32 ulp there is 6e-5), 1e-6 absolute on sigmas in
//! [0, 1]. Steps are f32 scalar arithmetic on both sides, a few ulps carried by the multistep
//! history: 1e-5 relative.

mod common;

use candle_core::{Device, Tensor};
use common::sweep::{self, Report};
use tessera_engine::scheduler;

#[test]
fn every_scheduler_config_matches_diffusers() {
    let cases = sweep::cases("scheduler");
    let mut report = Report::default();
    let mut expected = 0;
    for case in &cases {
        let steps = case.desc["steps"].as_u64().expect("steps") as usize;
        expected += 2 + steps;
        let mut sched = match scheduler::from_pretrained(&case.dir.join("scheduler"), None, None) {
            Ok(s) => s,
            Err(e) => {
                report.error(&case.name, e);
                continue;
            }
        };
        if let Err(e) = sched.set_timesteps(steps) {
            report.error(&case.name, e);
            continue;
        }
        let dev = Device::Cpu;
        let timesteps = Tensor::new(sched.timesteps(), &dev).expect("timesteps");
        report.check_abs(&format!("{} timesteps", case.name), &timesteps, case.output("timesteps"), 1e-4);
        let sigmas = Tensor::new(sched.sigmas(), &dev).expect("sigmas");
        report.check_abs(&format!("{} sigmas", case.name), &sigmas, case.output("sigmas"), 1e-6);
        let mut sample = case.output("init").clone();
        for i in 0..steps {
            let model_out = ((&sample * (1 + i % 3) as f64).and_then(|x| x.sin()).and_then(|x| x + 0.1 * i as f64))
                .expect("model stand-in");
            let what = format!("{} step {i}", case.name);
            match sched.step(&model_out, i, &sample) {
                Ok(next) => {
                    report.check(&what, &next, case.output(&format!("step{i}")), 1e-5);
                    sample = next;
                }
                Err(e) => {
                    report.error(&what, e);
                    break;
                }
            }
        }
    }
    report.finish("scheduler", expected);
}
