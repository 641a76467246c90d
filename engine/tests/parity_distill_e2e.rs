//! The lightx2v 4-step distill recipe end to end against diffusers (`tests/fixtures/golden/distill`,
//! run on the `lora` case's A14B-style pipeline with one LoRA per expert): the recipe's request —
//! `--scheduler euler --shift 5 --sigmas 1,0.75,0.5,0.25 --steps 4 --guidance 1 --lora
//! lora_high@high --lora lora_low@low` — and the same LoRAs with the folder's UniPC at shift 5
//! (`unipc_*`, `video_unipc`).
//!
//! - Per step, in process: the loop every plan runs (`run_loop`) with the workers' predictor
//!   (`ShardedPredictor`, one device, LoRAs merged at load); a scheduler wrapper records each
//!   step's model output and latents against diffusers' `noise_pred_step{i}` / `latents_step{i}`.
//! - End to end: a [`Session`] on 2 worker processes (Ulysses 2 × FSDP 2, each rank merging only
//!   its slices) with the VAE decode, final latents and video against diffusers, and the live
//!   previews of the run.
//!
//! Tolerance: 1e-4 relative (the bar); f32 on both sides, the same op order up to GEMM
//! blocking and the LoRA merged into the weights here vs applied unfused by PEFT there.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::errors;
use common::recording::Recording;
use tessera_engine::api::{
    GenerateParams, GenerationRequest, JobEvent, LoraSpec, ModelFiles, ParallelPlan, Prompt, SchedulerKind, Session,
    SessionOptions,
};
use tessera_engine::model_spec::ModelSpec;
use tessera_engine::pipeline::denoise::{run_loop, LoopSpec};
use tessera_engine::pipeline::sharded::{PlanGroups, ShardedPredictor};
use tessera_engine::scheduler::Scheduler;
use tessera_engine::tensor_io;

const TOL: f64 = 1e-4;

fn fixtures(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden")).join(rel)
}

fn pipeline() -> PathBuf {
    fixtures("lora/pipeline_a14b")
}

fn loras() -> ModelFiles {
    let spec = |s: &str| format!("{}/{s}", fixtures("lora").display()).parse::<LoraSpec>().unwrap();
    ModelFiles {
        loras: vec![spec("lora_high.safetensors:1.0@high"), spec("lora_low.safetensors:1.0@low")],
        ..ModelFiles::default()
    }
}

/// The recipe (`euler: true`) or the UniPC run of the case, both at shift 5.
fn params(euler: bool) -> GenerateParams {
    GenerateParams {
        height: 32,
        width: 32,
        frames: 9,
        steps: 4,
        guidance: 1.0,
        guidance_2: None,
        shift: Some(5.0),
        seed: 0,
        scheduler: euler.then_some(SchedulerKind::Euler),
        sigmas: euler.then(|| vec![1.0, 0.75, 0.5, 0.25]),
    }
}

fn golden(file: &str) -> std::collections::HashMap<String, Tensor> {
    tensor_io::read_all(&fixtures("distill").join(file), &Device::Cpu).unwrap()
}

fn check(what: &str, got: &Tensor, want: &Tensor) {
    let (max_abs, rel) = errors(got, want);
    println!("{what}: max-abs {max_abs:.3e}, relative {rel:.3e}");
    assert!(rel <= TOL, "{what}: relative {rel:.3e} > {TOL:e}");
}

#[test]
fn every_step_matches_diffusers_with_the_expert_loras() {
    let dev = Device::Cpu;
    let inputs = golden("inputs.safetensors");
    let out = golden("outputs.safetensors");
    let spec = ModelSpec::open(&pipeline(), &loras()).unwrap();
    assert!(spec.two_experts());
    let mut predictor =
        ShardedPredictor::load(&spec, &PlanGroups::default(), &inputs["prompt_embeds"], None, DType::F32, &dev)
            .unwrap();
    for (euler, prefix) in [(true, ""), (false, "unipc_")] {
        let p = params(euler);
        let inner = p.scheduler_in(&pipeline().join("scheduler")).unwrap();
        let mut sched = Recording::new(inner);
        let want_t = out[&format!("{prefix}timesteps")].to_vec1::<f32>().unwrap();
        assert_eq!(sched.timesteps(), want_t.as_slice(), "{prefix}timesteps");
        let loop_spec = LoopSpec::new(&spec, &p, DType::F32);
        assert_eq!(loop_spec.guidance, None, "guidance 1: one branch, no CFG");
        let last =
            run_loop(&loop_spec, &mut sched, inputs["latents"].clone(), None, &mut predictor, &mut |_| Ok(())).unwrap();
        let name = if euler { "euler recipe" } else { "unipc" };
        for (i, (noise, latents)) in sched.steps.iter().enumerate() {
            check(&format!("{name} step {i} model output"), noise, &out[&format!("{prefix}noise_pred_step{i}")]);
            check(&format!("{name} step {i} latents"), latents, &out[&format!("{prefix}latents_step{i}")]);
        }
        assert_eq!(sched.steps.len(), 4);
        check(&format!("{name} final latents"), &last, &out[&format!("{prefix}latents_step3")]);
    }
}

#[test]
fn the_recipe_on_two_workers_matches_diffusers_and_sends_previews() {
    let inputs = fixtures("distill").join("inputs.safetensors");
    let out = golden("outputs.safetensors");
    let mut session = Session::new(SessionOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        threads_per_rank: Some(1),
        ..SessionOptions::default()
    });
    for (euler, video) in [(true, "video"), (false, "video_unipc")] {
        let req = GenerationRequest {
            latents: Some(inputs.clone()),
            plan: ParallelPlan { ranks: 2, ulysses: 2, fsdp: 2, vae_parallel: 2, ..ParallelPlan::default() },
            files: loras(),
            preview_every: Some(1),
            ..GenerationRequest::new(pipeline(), Prompt::Embeds(inputs.clone()), params(euler))
        };
        let mut previews = Vec::new();
        let g = session
            .generate(&req, &mut |e| {
                if let JobEvent::DenoisePreview { preview, .. } = e {
                    previews.push(preview.clone());
                }
            })
            .unwrap();
        if euler {
            check("2 workers, recipe: final latents", &g.latents, &out["final_latents"]);
        }
        check(&format!("2 workers: {video}"), &g.video.as_ref().unwrap().frames, &out[video]);
        // One preview per step, in order, of the 4×4 latent grid.
        let steps: Vec<usize> = previews.iter().map(|p| p.step).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        assert!(previews.iter().all(|p| (p.preview.width, p.preview.height) == (4, 4)));
        // The settings record the LoRAs with their strengths and hashes.
        let settings = g.video.as_ref().unwrap().settings.as_ref().unwrap();
        assert_eq!(settings.model_files.loras.len(), 2);
        assert_eq!(settings.files.iter().filter(|f| f.component == "lora").count(), 2);
    }
    session.shutdown();
    assert!(Path::new(&inputs).is_file());
}
