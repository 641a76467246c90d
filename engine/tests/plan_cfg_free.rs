//! Guidance 1 (the distilled recipes) means one branch per step: the plan check refuses CFG
//! parallel with the plan to use instead, the planner proposes only Ulysses × FSDP plans, and the
//! 4-step presets load with a schedule that validates against their step count.

use std::path::Path;

use tessera_engine::api::planning::{cheapest_fit, describe_changes, fits, load_preset, GpuSpec};
use tessera_engine::api::{GenerateParams, ModelSpec, ParallelPlan, PlanModel, SchedulerKind};
use tessera_engine::planner::search::candidates;
use tessera_engine::planner::{predict, Options, Request, Target};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn spec(name: &str) -> ModelSpec {
    ModelSpec::from_path(&Path::new(ROOT).join("tests/fixtures/configs").join(name)).expect("config folder")
}

#[test]
fn cfg_parallel_without_guidance_is_refused_with_the_plan_to_use() {
    let plan = ParallelPlan { ranks: 8, ulysses: 4, cfg_parallel: 2, fsdp: 8, vae_parallel: 8, ..Default::default() };
    let e = plan.validate(PlanModel { num_heads: 40, cfg: false }).unwrap_err();
    let cli = tessera_engine::api::render(&e.to_string(), tessera_engine::api::Audience::Cli);
    println!("{cli}");
    assert_eq!(cli.lines().count(), 1);
    assert!(cli.contains("--cfg-parallel 2 needs classifier-free guidance"), "{cli}");
    assert!(cli.contains("use --ulysses 8 --cfg-parallel 1 instead"), "{cli}");
    // The suggested plan is valid.
    let fixed = ParallelPlan { ulysses: 8, cfg_parallel: 1, ..plan };
    fixed.validate(PlanModel { num_heads: 40, cfg: false }).expect("the suggestion validates");
}

#[test]
fn the_planner_proposes_ulysses_times_fsdp_without_cfg() {
    let a14b = spec("wan2.2-t2v-a14b");
    let req = Request { height: 720, width: 1280, frames: 81, guidance: 1.0, image: false };
    let plans = candidates(&a14b, &req, 8);
    assert!(!plans.is_empty());
    assert!(plans.iter().all(|p| p.cfg_parallel == 1 && p.ulysses == 8), "one branch: Ulysses over all ranks");
    assert!(plans.iter().any(|p| p.fsdp == 8));
    let gpu = GpuSpec::parse("8x24GB").unwrap();
    let base = ParallelPlan { ranks: 8, ulysses: 8, vae_parallel: 8, ..Default::default() };
    let opts = Options::new(Target::Cuda);
    let found = cheapest_fit(&a14b, &req, &base, &opts, &gpu).unwrap().expect("a CFG-free plan fits 8×24 GB");
    println!("{:?}: {:?}", found.plan, describe_changes(&base, &found.plan));
    assert_eq!((found.plan.cfg_parallel, found.plan.ulysses), (1, 8));
    assert!(found.plan.fsdp >= 2, "57 GB of experts need FSDP on 24 GB cards: {:?}", found.plan);
    assert!(fits(&found.prediction, &gpu));
    // One branch holds less during the denoise than two at the same plan (the run's peak may be
    // another phase's: the decode or the load).
    let denoise = |guidance: f64| {
        let p = predict(&a14b, &Request { guidance, ..req }, &found.plan, &opts).unwrap();
        p.ranks[0].phases.iter().find(|ph| ph.name == "denoise").expect("a denoise phase").peak_bytes
    };
    let (one, two) = (denoise(1.0), denoise(4.0));
    println!("denoise peak on rank 0: guidance 1 {one} B, guidance 4 {two} B");
    assert!(one < two);
}

#[test]
fn four_step_presets_hold_the_recipe() {
    for name in ["ti2v-5b-720p-4step-1x4090", "t2v-a14b-720p-4step-8x4090"] {
        let p = load_preset(&Path::new(ROOT).join("presets").join(format!("{name}.toml"))).expect("preset loads");
        let a = p.apply(&Default::default());
        assert_eq!(a.scheduler, Some(SchedulerKind::Euler), "{name}");
        assert_eq!(a.sigmas.as_deref(), Some(&[1.0, 0.75, 0.5, 0.25][..]), "{name}");
        assert_eq!((a.steps, a.guidance, a.plan.cfg_parallel), (Some(4), Some(1.0), 1), "{name}");
        let params = GenerateParams {
            height: a.height.unwrap(),
            width: a.width.unwrap(),
            frames: a.frames.unwrap(),
            steps: a.steps.unwrap(),
            guidance: a.guidance.unwrap(),
            guidance_2: None,
            shift: None,
            seed: 0,
            scheduler: a.scheduler,
            sigmas: a.sigmas.clone(),
        };
        let model = spec(p.model.as_deref().expect("names its model"));
        params.validate(model.size_multiple()).unwrap_or_else(|e| panic!("{name}: {e}"));
        a.plan.validate(PlanModel { num_heads: model.num_heads(), cfg: params.cfg() }).expect("plan validates");
    }
}
