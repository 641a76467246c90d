//! Whole TI2V pipelines against diffusers (`tests/fixtures/golden/pipeline`, `pipeline_i2v`, and the
//! odd-shape set): text-to-video and image-to-video with CFG over 4 UniPC steps, then the VAE.
//!
//! Tolerance: 1e-3 relative on the video (the budget for a whole pipeline: four DiT
//! forwards ×2 for CFG, a multistep solver and the VAE compound the ~1e-7 per-op f32 differences),
//! and 1e-4 on the final latents, which do not go through the VAE.

mod common;

use candle_core::{DType, Device};
use common::{assert_close, golden};
use tessera_engine::pipeline::image::load_image;
use tessera_engine::pipeline::{GenerateParams, PromptEmbeds, WanPipeline};
use tessera_engine::tensor_io;

fn run(dir: std::path::PathBuf, name: &str, i2v: bool) {
    let dev = Device::Cpu;
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let u = |k: &str| case[k].as_u64().unwrap() as usize;
    let params = GenerateParams {
        height: u("height"),
        width: u("width"),
        frames: u("num_frames"),
        steps: u("num_inference_steps"),
        guidance: case["guidance_scale"].as_f64().unwrap(),
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    let inputs = tensor_io::read_all(&dir.join("inputs.safetensors"), &dev).unwrap();
    let outputs = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let pipe = WanPipeline::load(&dir, DType::F32, &dev).unwrap();
    let embeds = PromptEmbeds {
        prompt: inputs["prompt_embeds"].clone(),
        negative: Some(inputs["negative_prompt_embeds"].clone()),
    };
    let image = i2v.then(|| load_image(&dir.join("image.png"), params.height, params.width, &dev).unwrap());
    let out = pipe.generate(&params, &embeds, image.as_ref(), Some(&inputs["latents"]), &mut |_| {}).unwrap();
    if let Some(want) = outputs.get("final_latents") {
        assert_close(&format!("{name} final latents"), &out.latents, want, 1e-4);
    }
    assert_close(&format!("{name} video"), &out.video, &outputs["video"], 1e-3);
}

#[test]
fn ti2v_text_to_video_matches_diffusers() {
    run(golden("pipeline"), "pipeline", false);
    run(golden("../golden-seed1/pipeline"), "seed1/pipeline", false);
}

#[test]
fn ti2v_image_to_video_matches_diffusers() {
    run(golden("pipeline_i2v"), "pipeline_i2v", true);
    run(golden("../golden-seed1/pipeline_i2v"), "seed1/pipeline_i2v", true);
}
