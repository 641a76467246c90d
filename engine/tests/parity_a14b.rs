//! Wan2.2 A14B (two experts switched at `boundary_ratio`, `guidance_scale_2` on the low-noise
//! expert, `expand_timesteps = False`) against diffusers on one device: the golden T2V-A14B and
//! I2V-A14B cases (`tests/fixtures/golden/a14b_t2v`, `a14b_i2v`; 5 UniPC steps, 2 on the
//! high-noise expert and 3 on the low-noise one).
//!
//! The denoise runs through the loop every plan runs (`pipeline::denoise::run_loop`) with the
//! predictor the workers use (`ShardedPredictor`, here with no groups: one device). A scheduler
//! wrapper records what the loop passes to each step (the guided prediction) and what it returns
//! (the step's latents); a predictor wrapper records which expert and which guidance scale each
//! step asked for. Both forward to the real objects unchanged.
//!
//! Tolerance: 1e-4 relative everywhere (the bar). Measured: ≤ 1e-6 (two tiny transformers,
//! f32, the same op order as diffusers up to GEMM blocking); the VAE adds its own ~1e-6.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::recording::Recording;
use common::{assert_close, errors, golden};
use tessera_engine::model_spec::ModelSpec;
use tessera_engine::models::wan::vae::{self, VaeParts};
use tessera_engine::pipeline::denoise::{run_loop, LoopSpec, NoisePredictor};
use tessera_engine::pipeline::image::load_image;
use tessera_engine::pipeline::sampling::LatentStats;
use tessera_engine::pipeline::sharded::{PlanGroups, ShardedPredictor};
use tessera_engine::pipeline::{wan, GenerateParams, PromptEmbeds, WanPipeline};
use tessera_engine::scheduler::{self, Scheduler};
use tessera_engine::tensor_io;

/// Records (expert, guidance) of every prediction the loop asks the real predictor for.
struct Asked<'a> {
    inner: &'a mut ShardedPredictor,
    calls: Vec<(usize, Option<f64>)>,
}

impl NoisePredictor for Asked<'_> {
    fn predict(&mut self, expert: usize, input: &Tensor, timestep: &Tensor, guidance: Option<f64>) -> Result<Tensor> {
        self.calls.push((expert, guidance));
        self.inner.predict(expert, input, timestep, guidance)
    }
}

struct Case {
    name: &'static str,
    dir: std::path::PathBuf,
    json: serde_json::Value,
    params: GenerateParams,
    inputs: std::collections::HashMap<String, Tensor>,
    outputs: std::collections::HashMap<String, Tensor>,
}

fn case(name: &'static str) -> Case {
    let dir = golden(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let u = |k: &str| json[k].as_u64().unwrap() as usize;
    let params = GenerateParams {
        height: u("height"),
        width: u("width"),
        frames: u("num_frames"),
        steps: u("num_inference_steps"),
        guidance: json["guidance_scale"].as_f64().unwrap(),
        guidance_2: json["guidance_scale_2"].as_f64(),
        shift: None,
        scheduler: None,
        sigmas: None,
        seed: 0,
    };
    let inputs = tensor_io::read_all(&dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
    let outputs = tensor_io::read_all(&dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
    Case { name, dir, json, params, inputs, outputs }
}

/// What one denoise recorded.
struct Denoised {
    /// Per step: (guided prediction, latents after the step).
    steps: Vec<(Tensor, Tensor)>,
    /// Per step: (expert, guidance) the loop asked for.
    calls: Vec<(usize, Option<f64>)>,
    last: Tensor,
}

/// The denoise of `c` with `params`.
fn denoise(c: &Case, params: &GenerateParams) -> Denoised {
    let dev = Device::Cpu;
    let spec = ModelSpec::from_path(&c.dir).unwrap();
    assert!(spec.two_experts(), "{}: the case has two experts", c.name);
    let condition = c.json["image"].as_str().map(|image| {
        let vae = vae::load(&c.dir, VaeParts::Encoder, DType::F32, &dev).unwrap();
        let stats = LatentStats::new(&spec.vae.latents_mean, &spec.vae.latents_std, &dev).unwrap();
        let img = load_image(&c.dir.join(image), params.height, params.width, &dev).unwrap();
        let cond = wan::image_condition(&vae, &stats, false, &img, params).unwrap();
        assert_close(
            &format!("{} image condition (mask + latents)", c.name),
            cond.payload(),
            &c.outputs["condition"],
            1e-4,
        );
        cond
    });
    let mut predictor = ShardedPredictor::load(
        &spec,
        &PlanGroups::default(),
        &c.inputs["prompt_embeds"],
        Some(&c.inputs["negative_prompt_embeds"]),
        DType::F32,
        &dev,
    )
    .unwrap();
    let mut sched = Recording::new(scheduler::from_pretrained(&c.dir, None, None).unwrap());
    sched.set_timesteps(params.steps).unwrap();
    let mut asked = Asked { inner: &mut predictor, calls: vec![] };
    let spec = LoopSpec::new(&spec, params, DType::F32);
    let last =
        run_loop(&spec, &mut sched, c.inputs["latents"].clone(), condition.as_ref(), &mut asked, &mut |_| Ok(()))
            .unwrap();
    let calls = asked.calls;
    Denoised { steps: sched.steps, calls, last }
}

fn check(name: &'static str) {
    let c = case(name);
    let Denoised { steps, calls, last } = denoise(&c, &c.params);
    // The expert of each step, as diffusers chose it (`t >= boundary_ratio · 1000`: high noise).
    let want_experts: Vec<usize> = c.json["expert_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e.as_str().unwrap() {
            "transformer" => 0,
            "transformer_2" => 1,
            other => panic!("unknown expert {other}"),
        })
        .collect();
    let experts: Vec<usize> = calls.iter().map(|c| c.0).collect();
    println!("{name}: experts per step {experts:?} (diffusers {want_experts:?})");
    assert_eq!(experts, want_experts, "{name}: the expert switches at the step diffusers switches");
    let switch = experts.iter().position(|&e| e == 1).unwrap();
    assert!(switch > 0 && switch < experts.len(), "{name}: both experts run");
    // guidance_scale on the high-noise steps, guidance_scale_2 on the low-noise ones.
    let (g1, g2) = (c.params.guidance, c.params.guidance_2.unwrap());
    assert_ne!(g1, g2, "the case tells the two scales apart");
    for (i, (e, g)) in calls.iter().enumerate() {
        assert_eq!(*g, Some(if *e == 0 { g1 } else { g2 }), "{name} step {i}: guidance");
    }
    let timesteps = c.outputs["timesteps"].to_vec1::<f32>().unwrap();
    assert_eq!(steps.len(), timesteps.len());
    for (i, (noise, latents)) in steps.iter().enumerate() {
        assert_close(
            &format!("{name} step {i} guided prediction"),
            noise,
            &c.outputs[&format!("noise_pred_step{i}")],
            1e-4,
        );
        assert_close(&format!("{name} step {i} latents"), latents, &c.outputs[&format!("latents_step{i}")], 1e-4);
    }
    assert_close(&format!("{name} final latents"), &last, &c.outputs["final_latents"], 1e-4);

    // The whole single-device pipeline (image encode, both experts, VAE decode) gives the video.
    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&c.dir, DType::F32, &dev).unwrap();
    let embeds = PromptEmbeds {
        prompt: c.inputs["prompt_embeds"].clone(),
        negative: Some(c.inputs["negative_prompt_embeds"].clone()),
    };
    let image =
        c.json["image"].as_str().map(|i| load_image(&c.dir.join(i), c.params.height, c.params.width, &dev).unwrap());
    let out = pipe.generate(&c.params, &embeds, image.as_ref(), Some(&c.inputs["latents"]), &mut |_| {}).unwrap();
    assert_close(&format!("{name} pipeline final latents"), &out.latents, &c.outputs["final_latents"], 1e-4);
    assert_close(&format!("{name} video"), &out.video, &c.outputs["video"], 1e-4);

    // guidance_scale_2 matters: the same run with the first scale on both experts is far off.
    let one_scale = GenerateParams { guidance_2: None, ..c.params.clone() };
    let Denoised { calls, last, .. } = denoise(&c, &one_scale);
    assert!(calls.iter().all(|(_, g)| *g == Some(g1)));
    let (max, rel) = errors(&last, &c.outputs["final_latents"]);
    println!("{name}: without guidance_scale_2 the final latents are off by max_abs {max:.2e} rel {rel:.2e}");
    assert!(rel > 1e-3, "{name}: guidance_scale_2 made no difference (rel {rel:.2e})");
}

#[test]
fn t2v_a14b_matches_diffusers_step_by_step() {
    check("a14b_t2v");
}

#[test]
fn i2v_a14b_matches_diffusers_step_by_step() {
    check("a14b_i2v");
}
