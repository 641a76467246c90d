//! `HunyuanVideo15ImageToVideoPipeline` on one device against diffusers
//! (`tests/fixtures/hv15/pipeline_i2v`, written by `scripts/gen_hv15_pipeline_i2v.py` on the tracked
//! bf16 fixture models and SigLIP): the bucket from `target_size` and the image's aspect, the cond
//! latents (`vae.encode(image).mode() · scaling_factor`, untiled and tiled), SigLIP `image_embeds`,
//! then 4 steps at guidance 6 (untiled / VAE tiling, which also tiles the image encode) and 1 (one
//! forward per step), and the step-distilled run (`transformer_meanflow`, shift 7, guidance 1,
//! `timestep_r` = next timestep, 0 last). `HV15_I2V_CASE=<dir>` runs it on another case (the shared
//! golden one, which also holds the decoded videos: checked when present).
//!
//! Tolerance: 1e-4 relative on latents, as for Wan and the T2V pipeline (four steps of an f32 model
//! whose outputs differ from torch's by ~3e-7, amplified by CFG 6).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use tessera_engine::models::hv15::transformer::valid_rows;
use tessera_engine::models::wan::vae::Tiling;
use tessera_engine::pipeline::hv15::{crop_size_list, i2v_bucket, read_rgb, Hv15Pipeline, PromptEmbeds};
use tessera_engine::scheduler::Scheduler;
use tessera_engine::tensor_io;

fn case_dir() -> PathBuf {
    match std::env::var_os("HV15_I2V_CASE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/pipeline_i2v"),
    }
}

fn tiling() -> Tiling {
    // diffusers' enable_tiling(tile_sample_min 64, overlap 0.25): stride 48 px.
    Tiling::parse("64,64,48,48").unwrap()
}

#[test]
fn hv15_i2v_buckets_match_diffusers() {
    // `generate_crop_size_list(112, 16)` as diffusers lists it (height, width).
    let want = [
        (192, 48),
        (192, 64),
        (176, 64),
        (160, 64),
        (144, 64),
        (144, 80),
        (128, 80),
        (128, 96),
        (112, 96),
        (112, 112),
        (96, 112),
        (96, 128),
        (80, 128),
        (80, 144),
        (64, 144),
        (64, 160),
        (64, 176),
        (64, 192),
        (48, 192),
    ];
    assert_eq!(crop_size_list(112, 16), want);
    assert_eq!(i2v_bucket(96, 128, 112, 16).unwrap(), (96, 128));
    // A landscape image takes the closest bucket at or above its aspect (h/w), a portrait one at or below.
    // (diffusers' `calculate_default_height_width` gives these.)
    assert_eq!(i2v_bucket(480, 848, 112, 16).unwrap(), (80, 128));
    assert_eq!(i2v_bucket(848, 480, 112, 16).unwrap(), (128, 80));
    assert_eq!(i2v_bucket(100, 100, 112, 16).unwrap(), (112, 112));
}

#[test]
fn hv15_i2v_pipeline_matches_diffusers() {
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
    let latents = &i["latents"];
    let (rgb, hw) = read_rgb(&dir.join("image.png")).unwrap();

    let (image, bucket) = pipe.image_cond(&rgb, hw, None).unwrap();
    assert_eq!(bucket, hw, "the case's image is at its bucket size");
    assert_close("image latents (encode mode × scaling_factor)", &image.latents, &o["dbg_image_latents"], 1e-4);
    assert_close("image embeds (SigLIP)", &image.embeds.unsqueeze(0).unwrap(), &o["dbg_image_embeds"], 1e-4);
    let (image_tiled, _) = pipe.image_cond(&rgb, hw, Some(&tiling())).unwrap();
    assert_close("image latents, tiled encode", &image_tiled.latents, &o["dbg_image_latents_tiled"], 1e-4);

    let sched = pipe.scheduler(4, None).unwrap();
    let ts = Tensor::new(sched.timesteps(), &dev).unwrap();
    assert_close("timesteps", &ts, &o["dbg_timesteps"], 1e-6);

    let g6 = pipe.denoise(latents, 4, 6.0, None, &prompt, Some(&negative), Some(&image)).unwrap();
    assert_close("final latents, guidance 6", &g6, &o["final_latents_g6"], 1e-4);
    let g6t = pipe.denoise(latents, 4, 6.0, None, &prompt, Some(&negative), Some(&image_tiled)).unwrap();
    assert_close("final latents, guidance 6, tiled image encode", &g6t, &o["final_latents_g6_tiled"], 1e-4);
    let g1 = pipe.denoise(latents, 4, 1.0, None, &prompt, None, Some(&image)).unwrap();
    assert_close("final latents, guidance 1 (one forward per step)", &g1, &o["final_latents_g1"], 1e-4);
    if let Some(video) = o.get("video_g6") {
        assert_close("video, guidance 6", &pipe.decode(&g6, None).unwrap(), video, 1e-4);
        let tiled = pipe.decode(&g6t, Some(&tiling())).unwrap();
        assert_close("video, guidance 6, tiled", &tiled, &o["video_g6_tiled"], 1e-4);
    }

    // The step-distilled transformer: guidance 1, shift 7, timestep_r = the next timestep.
    let mf = Hv15Pipeline::load_with_transformer(&dir, &dir.join("transformer_meanflow"), DType::F32, &dev).unwrap();
    assert!(mf.transformer().config().use_meanflow);
    let sched = mf.scheduler(4, Some(7.0)).unwrap();
    let ts = Tensor::new(sched.timesteps(), &dev).unwrap();
    assert_close("meanflow timesteps (shift 7)", &ts, &o["dbg_meanflow_timesteps"], 1e-6);
    let mut r: Vec<f32> = sched.timesteps()[1..].to_vec();
    r.push(0.0);
    assert_close("meanflow timestep_r", &Tensor::new(r, &dev).unwrap(), &o["dbg_meanflow_timestep_r"], 1e-6);
    let out = mf.denoise(latents, 4, 1.0, Some(7.0), &prompt, None, Some(&image)).unwrap();
    assert_close("final latents, meanflow", &out, &o["final_latents_meanflow"], 1e-4);
}
