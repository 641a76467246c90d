//! `HunyuanVideo15Pipeline` text-to-video on one device against diffusers
//! (`tests/fixtures/hv15/pipeline`, written by `scripts/gen_hv15_pipeline.py` on the small bf16
//! fixture models): 4 steps at guidance 6 (CFG) and 1 (one forward per step), final latents and the
//! decoded video. `HV15_PIPELINE_CASE=<dir>` runs it on another case (e.g. the shared golden one).
//!
//! Tolerance: 1e-4 relative on latents, as for Wan (four steps of an f32 model whose outputs differ
//! from torch's by ~3e-7, amplified by CFG 6).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::assert_close;
use tessera_engine::models::hv15::transformer::valid_rows;
use tessera_engine::pipeline::hv15::{Hv15Pipeline, PromptEmbeds};
use tessera_engine::tensor_io;

fn case_dir() -> PathBuf {
    match std::env::var_os("HV15_PIPELINE_CASE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/pipeline"),
    }
}

#[test]
fn hv15_t2v_pipeline_matches_diffusers() {
    let dev = Device::Cpu;
    let dir = case_dir();
    println!("case {}", dir.display());
    let pipe = Hv15Pipeline::load(&dir, DType::F32, &dev).unwrap();
    let i = tensor_io::read_all(&dir.join("inputs.safetensors"), &dev).unwrap();
    let o = tensor_io::read_all(&dir.join("outputs.safetensors"), &dev).unwrap();
    let rows = |x: &str, m: &str| valid_rows(&i[x].get(0).unwrap(), &i[m].get(0).unwrap()).unwrap();
    let prompt = PromptEmbeds {
        text: rows("prompt_embeds", "prompt_embeds_mask").unwrap(),
        glyph: rows("prompt_embeds_2", "prompt_embeds_mask_2"),
    };
    let negative = PromptEmbeds {
        text: rows("negative_prompt_embeds", "negative_prompt_embeds_mask").unwrap(),
        glyph: rows("negative_prompt_embeds_2", "negative_prompt_embeds_mask_2"),
    };
    assert!(negative.glyph.is_none(), "the empty negative prompt has no glyph tokens");
    let latents = &i["latents"];
    let sched = pipe.scheduler(4, None).unwrap();
    use tessera_engine::scheduler::Scheduler;
    let ts = candle_core::Tensor::new(sched.timesteps(), &dev).unwrap();
    assert_close("timesteps", &ts, &o["dbg_timesteps"], 1e-6);
    assert_eq!(pipe.guidance_scale, 6.0, "guider/ holds guidance 6");

    let g6 = pipe.denoise_t2v(latents, 4, 6.0, None, &prompt, Some(&negative)).unwrap();
    assert_close("final latents, guidance 6", &g6, &o["final_latents_g6"], 1e-4);
    let g1 = pipe.denoise_t2v(latents, 4, 1.0, None, &prompt, None).unwrap();
    assert_close("final latents, guidance 1 (one forward per step)", &g1, &o["final_latents_g1"], 1e-4);
    let video = pipe.decode(&g6, None).unwrap();
    assert_close("video, guidance 6", &video, &o["video_g6"], 1e-4);
}
