//! The distilled sampling recipe against diffusers 0.42.1 (`tests/fixtures/golden/distill`, the
//! lightx2v 4-step recipe; `case.json` says how it was run): `--scheduler euler --sigmas
//! 1,0.75,0.5,0.25` with the case's shift 5 must give diffusers' timesteps and sigmas, and each
//! scheduler update must turn the golden latents of step i−1 and the golden model output of step i
//! into the golden latents of step i — for the Euler run and for the `unipc_*` run (the same
//! pipeline with UniPC, 4 steps). The schedulers are built the way a request builds them
//! ([`GenerateParams::scheduler`]), so the flags' path is what is tested.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tessera_engine::api::{GenerateParams, SchedulerKind};
use tessera_engine::scheduler::{self, Scheduler};
use tessera_engine::tensor_io;

const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/distill");
/// The UniPC + FlowMatchEuler case of `gen.py` (a UniPC `scheduler_config.json` lives in `pipeline/`).
const SCHEDULER_CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/scheduler");
const PIPELINE_SCHEDULER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline/scheduler");

/// Max-abs and relative (‖a−b‖/‖b‖) error.
fn errors(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let diff = (ours - reference).expect("same shape");
    let max_abs = diff.abs().and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>());
    let norm = |t: &Tensor| t.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("norm").sqrt();
    (max_abs.expect("max"), norm(&diff) / norm(reference).max(f32::MIN_POSITIVE))
}

fn read(file: &str) -> HashMap<String, Tensor> {
    tensor_io::read_all(&Path::new(CASE).join(file), &Device::Cpu).expect("golden tensors")
}

fn case() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(CASE).join("case.json")).expect("case.json"))
        .expect("case.json parses")
}

fn params(scheduler: Option<SchedulerKind>, sigmas: Option<Vec<f64>>) -> GenerateParams {
    GenerateParams {
        height: 64,
        width: 64,
        frames: 9,
        steps: 4,
        guidance: 1.0,
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler,
        sigmas,
    }
}

/// Checks the tables, then every step from the golden latents before it (`prefix` `""` for the
/// Euler run, `"unipc_"` for the UniPC one). Steps are chained from our own latents too, so the
/// multistep history is exercised as in a run.
fn check_run(name: &str, sched: &mut dyn Scheduler, prefix: &str, timesteps: &Tensor, sigmas: Option<&Tensor>) {
    let dev = Device::Cpu;
    let out = read("outputs.safetensors");
    let ours_t = Tensor::new(sched.timesteps(), &dev).expect("timesteps");
    let (t_abs, _) = errors(&ours_t, timesteps);
    println!("{name}: timesteps {:?}, max-abs {t_abs:e}", sched.timesteps());
    // Both are float32 roundings of the same computation: equal to the last bit.
    assert_eq!(t_abs, 0.0, "{name} timesteps {:?}", sched.timesteps());
    if let Some(sigmas) = sigmas {
        let (s_abs, _) = errors(&Tensor::new(sched.sigmas(), &dev).expect("sigmas"), sigmas);
        println!("{name}: sigmas {:?}, max-abs {s_abs:e}", sched.sigmas());
        assert_eq!(s_abs, 0.0, "{name} sigmas {:?}", sched.sigmas());
    }
    let mut latents = read("inputs.safetensors").remove("latents").expect("latents");
    for i in 0..sched.timesteps().len() {
        let v = &out[&format!("{prefix}noise_pred_step{i}")];
        latents = sched.step(v, i, &latents).expect("step");
        let want = &out[&format!("{prefix}latents_step{i}")];
        let (max_abs, rel) = errors(&latents, want);
        println!("{name} step {i}: max-abs {max_abs:e}, relative {rel:e}");
        // f32 scalar updates on both sides over 4 steps: a few ulps, far below 1e-5 relative.
        assert!(rel <= 1e-5, "{name} step {i}: relative {rel}, max-abs {max_abs}");
    }
}

#[test]
fn euler_on_the_distill_sigmas_matches_diffusers() {
    let case = case();
    let recipe = &case["recipe"];
    let sigmas: Vec<f64> = vec![1.0, 0.75, 0.5, 0.25];
    let out = read("outputs.safetensors");
    // The case's own scheduler folder is already Euler; name it anyway, as the recipe's flags do.
    let p = params(Some(SchedulerKind::Euler), Some(sigmas.clone()));
    p.validate(32).expect("the recipe is a valid request");
    let mut sched = p.scheduler(&Path::new(CASE).join("scheduler")).expect("scheduler");
    check_run("euler", sched.as_mut(), "", &out["timesteps"], Some(&out["sigmas"]));
    assert_eq!(recipe["num_inference_steps"], 4);
    let (max_abs, _) = errors(&out["final_latents"], &out["latents_step3"]);
    assert_eq!(max_abs, 0.0, "final_latents are the last step's");

    // A UniPC model folder (Wan's default) run with `--scheduler euler` keeps its flow_shift (5).
    let mut from_unipc = p.scheduler(Path::new(PIPELINE_SCHEDULER)).expect("scheduler");
    check_run("euler from a UniPC config", from_unipc.as_mut(), "", &out["timesteps"], Some(&out["sigmas"]));
}

#[test]
fn unipc_on_the_distill_case_matches_diffusers() {
    let out = read("outputs.safetensors");
    // The case's folder is Euler (shift 5); `--scheduler unipc` gives Wan's UniPC with that shift,
    // which is the config `case.json` "unipc_run" records.
    let p = params(Some(SchedulerKind::UniPc), None);
    let mut sched = p.scheduler(&Path::new(CASE).join("scheduler")).expect("scheduler");
    check_run("unipc", sched.as_mut(), "unipc_", &out["unipc_timesteps"], None);
}

#[test]
fn switching_the_class_keeps_the_shift_of_the_golden_scheduler_case() {
    // The scheduler case runs UniPC (flow_shift 5) and Euler (shift 5) on their default spacing:
    // the pipeline folder's UniPC config with `--scheduler euler` must build the Euler tables.
    let outputs = tensor_io::read_all(&Path::new(SCHEDULER_CASE).join("outputs.safetensors"), &Device::Cpu)
        .expect("scheduler outputs");
    let mut sched = scheduler::from_pretrained(Path::new(PIPELINE_SCHEDULER), Some(SchedulerKind::Euler), None)
        .expect("euler from a UniPC config");
    sched.set_timesteps(10).expect("set_timesteps");
    let (t, _) = errors(&Tensor::new(sched.timesteps(), &Device::Cpu).unwrap(), &outputs["euler_timesteps"]);
    let (s, _) = errors(&Tensor::new(sched.sigmas(), &Device::Cpu).unwrap(), &outputs["euler_sigmas"]);
    println!("euler (converted) vs the scheduler case: timesteps max-abs {t:e}, sigmas max-abs {s:e}");
    // One f32 ulp of ~1000 for Euler's fractional timesteps (as parity_scheduler allows).
    assert!(t <= 1e-4 && s <= 1e-7, "timesteps {t}, sigmas {s}");
}

#[test]
fn custom_sigmas_other_than_the_recipe_match_diffusers() {
    // An independent schedule and shift, from diffusers 0.42.1:
    //   FlowMatchEulerDiscreteScheduler(shift=3.0).set_timesteps(sigmas=[1.0, 0.9, 0.6, 0.3, 0.1])
    //   UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    //       .set_timesteps(sigmas=np.array([1.0, 0.9, 0.6, 0.3, 0.1]))
    // (UniPC needs a NumPy array there: a list fails in `flow_shift * sigmas`.)
    let given = [1.0, 0.9, 0.6, 0.3, 0.1];
    // The f32 values as Python prints them (exact decimal expansions).
    let euler_t = [1000.0f32, 964.285_64, 818.181_8, 562.5, 250.0];
    let euler_s = [1.0f32, 0.964_285_7, 0.818_181_8, 0.5625, 0.25, 0.0];
    let unipc_t = [999.0f32, 964.0, 818.0, 562.0, 250.0];
    let unipc_s = [0.999_999_f32, 0.964_285_73, 0.818_181_8, 0.5625, 0.25, 0.0];
    let dir = PathBuf::from(PIPELINE_SCHEDULER);
    for (kind, t, s) in
        [(SchedulerKind::Euler, &euler_t[..], &euler_s[..]), (SchedulerKind::UniPc, &unipc_t[..], &unipc_s[..])]
    {
        let mut sched = scheduler::from_pretrained(&dir, Some(kind), Some(3.0)).expect("scheduler");
        sched.set_sigmas(&given).expect("set_sigmas");
        println!("{kind:?}: timesteps {:?}, sigmas {:?}", sched.timesteps(), sched.sigmas());
        assert_eq!(sched.timesteps(), t, "{kind:?} timesteps");
        assert_eq!(sched.sigmas(), s, "{kind:?} sigmas");
    }
}

#[test]
fn bad_schedules_name_the_flag() {
    let e = params(None, Some(vec![1.0, 0.75, 0.5])).validate(32).unwrap_err();
    assert_eq!(e.to_string(), "«sigmas» gives 3 values but «steps» is 4: give one sigma per step");
    let e = params(None, Some(vec![1.0, 0.5, 0.75, 0.25])).validate(32).unwrap_err();
    assert!(e.to_string().contains("must decrease step by step (0.5 then 0.75)"), "{e}");
    let e = params(None, Some(vec![1.5, 0.75, 0.5, 0.25])).validate(32).unwrap_err();
    assert!(e.to_string().contains("1.5 is outside (0, 1]"), "{e}");
}
