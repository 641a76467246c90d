//! HunyuanVideo 1.5 text-to-video through the engine's front door on real worker processes: a
//! [`Session`] runs diffusers' golden `HunyuanVideo15Pipeline` case (`tests/fixtures/hv15/pipeline`:
//! 4 steps, guidance 6, prompt and glyph embeddings with padding masks, given noise) on one rank and
//! under Ulysses 2, CFG parallel 2 + FSDP 2, Ulysses 2 × CFG 2 + FSDP 4 (each with a halo VAE over 2
//! ranks) and Ulysses 2 + FSDP 2 with a tiled VAE over 2 ranks. Every plan's latents equal the
//! single rank's within f32 rounding and diffusers' within the golden tolerance; the videos equal
//! diffusers' untiled one (halo = untiled within f32 rounding) or the single rank's tiled one (tiles
//! are bit-identical to single-device tiling). Guidance 1 runs one branch per step.

mod multiprocess_util;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use multiprocess_util::{errors, init_logging, session_options};
use tessera_engine::api::{
    GenerateParams, GenerationRequest, JobEvent, ParallelPlan, Prompt, Session, SessionOptions, TextEncoderPlacement,
    TilingSpec, VaeMode,
};
use tessera_engine::tensor_io;

fn case() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hv15/pipeline"))
}

/// The golden call: 32×48, 5 frames, 4 steps; the embeddings file holds diffusers' argument names
/// (`prompt_embeds(_mask)`, `prompt_embeds_2`, `negative_…`) and the noise.
fn request(guidance: f64, plan: ParallelPlan) -> GenerationRequest {
    let inputs = case().join("inputs.safetensors");
    let params = GenerateParams {
        height: 32,
        width: 48,
        frames: 5,
        steps: 4,
        guidance,
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    GenerationRequest {
        negative: Some(Prompt::Embeds(inputs.clone())),
        latents: Some(inputs.clone()),
        plan,
        ..GenerationRequest::new(case(), Prompt::Embeds(inputs), params)
    }
}

fn golden(name: &str) -> Tensor {
    tensor_io::read_tensor(&case().join("outputs.safetensors"), name, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn hv15_generation_on_workers_matches_one_rank_and_diffusers() {
    init_logging();
    let mut session = Session::new(session_options());
    let (want_latents, want_video) = (golden("final_latents_g6"), golden("video_g6"));

    let single = session.generate(&request(6.0, ParallelPlan::default()), &mut |_| {}).unwrap();
    let (max, rel) = errors(&single.latents, &want_latents);
    println!("one rank: latents max-abs {max:.2e} rel {rel:.2e} vs diffusers");
    // Golden README: a correct f32 port lands at ~1e-4 after 4 steps of CFG 6.
    assert!(rel <= 1e-4, "latents rel {rel:.2e}");
    let video = single.video.as_ref().expect("a video").frames.clone();
    let (max, rel) = errors(&video, &want_video);
    println!("one rank: video max-abs {max:.2e} rel {rel:.2e} vs diffusers");
    assert!(rel <= 1e-4, "video rel {rel:.2e}");

    let halo = |ranks, ulysses, cfg_parallel, fsdp| ParallelPlan {
        ranks,
        ulysses,
        cfg_parallel,
        fsdp,
        vae_parallel: 2,
        vae_mode: VaeMode::Halo,
        ..Default::default()
    };
    for (name, plan) in [("U2", halo(2, 2, 1, 1)), ("C2 + F2", halo(2, 1, 2, 2)), ("U2 × C2 + F4", halo(4, 2, 2, 4))] {
        let mut pieces = 0;
        let g = session
            .generate(&request(6.0, plan), &mut |e| pieces += usize::from(matches!(e, JobEvent::VaePiece { .. })))
            .unwrap();
        let (max, rel) = errors(&g.latents, &single.latents);
        println!("{name} + halo VAE 2: latents max-abs {max:.2e} rel {rel:.2e} vs one rank");
        // Same weights (FSDP gathers the same bits), same loop: Ulysses only re-blocks the GEMMs.
        assert!(rel <= 1e-6, "{name}: latents rel {rel:.2e} vs one rank");
        let (max, rel) = errors(&g.latents, &want_latents);
        println!("{name} + halo VAE 2: latents max-abs {max:.2e} rel {rel:.2e} vs diffusers");
        assert!(rel <= 1e-4, "{name}: latents rel {rel:.2e} vs diffusers");
        let (max, rel) = errors(&g.video.expect("a video").frames, &want_video);
        println!("{name} + halo VAE 2: video max-abs {max:.2e} rel {rel:.2e} vs diffusers (untiled)");
        assert!(rel <= 1e-4, "{name}: video rel {rel:.2e}");
        assert!(pieces >= 2, "{name}: {pieces} VaePiece events from a halo decode over 2 ranks");
    }

    // Tiles: 32×32-pixel tiles with stride 16 (2 × 3 tiles, blended), bit-identical to one rank.
    let tiling = Some(TilingSpec { tile_height: 32, tile_width: 32, stride_height: 16, stride_width: 16 });
    let tiles = |ranks, ulysses, fsdp, vae_parallel| ParallelPlan {
        ranks,
        ulysses,
        fsdp,
        vae_parallel,
        vae_mode: VaeMode::Tiles,
        vae_tiling: tiling,
        ..Default::default()
    };
    let one = session.generate(&request(6.0, tiles(1, 1, 1, 1)), &mut |_| {}).unwrap();
    let g = session.generate(&request(6.0, tiles(2, 2, 2, 2)), &mut |_| {}).unwrap();
    let (one_video, video) = (one.video.expect("a video").frames, g.video.expect("a video").frames);
    let (max, rel) = errors(&video, &one_video);
    println!("U2 + F2 + tiles VAE 2: video max-abs {max:.2e} rel {rel:.2e} vs one rank tiled");
    // The tiled decode is bit-identical across ranks; only the latents' Ulysses rounding (≤ 1e-6
    // relative above) reaches the pixels.
    assert!(rel <= 1e-5, "tiles: video rel {rel:.2e} vs one rank tiled");
    let (max, rel) = errors(&one_video, &want_video);
    println!("one rank, tiled 32/16: video max-abs {max:.2e} rel {rel:.2e} vs diffusers untiled (tiling differs)");

    // Guidance 1: one branch per step (no negative), over Ulysses 2.
    let g1 = session.generate(&request(1.0, halo(2, 2, 1, 1)), &mut |_| {}).unwrap();
    let (max, rel) = errors(&g1.latents, &golden("final_latents_g1"));
    println!("U2, guidance 1: latents max-abs {max:.2e} rel {rel:.2e} vs diffusers");
    assert!(rel <= 1e-4, "guidance 1: latents rel {rel:.2e}");
    session.shutdown();
}

/// The golden pipeline in `root` (symlinks) with the golden Qwen2.5-VL (`hv15/qwen/text_encoder`)
/// and the prompt case's tokenizer, so prompt text can be encoded.
fn with_prompt_text_encoder(root: &std::path::Path) {
    let fixtures = case().join("..");
    for entry in ["model_index.json", "scheduler", "guider", "transformer", "vae"] {
        std::os::unix::fs::symlink(case().join(entry).canonicalize().unwrap(), root.join(entry)).unwrap();
    }
    std::os::unix::fs::symlink(fixtures.join("qwen/text_encoder").canonicalize().unwrap(), root.join("text_encoder"))
        .unwrap();
    std::os::unix::fs::symlink(fixtures.join("prompt/tokenizer").canonicalize().unwrap(), root.join("tokenizer"))
        .unwrap();
}

/// `--text-encoder-on sharded`: the world first encodes the prompt and the empty negative with
/// Qwen2.5-VL split by layer over its two ranks (`text_encode` in every rank's report, each
/// holding its share), then generates latents equal to the host-encoded run's (the split is exact,
/// `sharded_hv15_text_encoder`). The prompt cache is consulted first and filled after, the same
/// entries as the host path's: a fresh session finds both and runs no text job.
#[test]
fn hv15_prompt_text_split_over_the_workers_equals_the_host() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("model");
    std::fs::create_dir(&root).unwrap();
    with_prompt_text_encoder(&root);
    let mut req = request(6.0, ParallelPlan { ranks: 2, cfg_parallel: 2, vae_parallel: 2, ..Default::default() });
    req.model = root.clone();
    req.prompt = Prompt::Text("A quiet lake at dawn, mist over the water, no text anywhere.".into());
    req.negative = None;
    let mut host_session = Session::new(session_options());
    let host = host_session.generate(&req, &mut |_| {}).unwrap();
    host_session.shutdown();
    assert!(host.report.ranks.iter().all(|r| r.text_encoder_weights_bytes == 0));

    req.plan.text_encoder = TextEncoderPlacement::Sharded;
    let cache = tmp.path().join("prompt-cache");
    let cached = || SessionOptions { prompt_cache_dir: Some(cache.clone()), ..session_options() };
    let mut sharded_session = Session::new(cached());
    let sharded = sharded_session.generate(&req, &mut |_| {}).unwrap();
    sharded_session.shutdown();
    let (max, rel) = errors(&sharded.latents, &host.latents);
    println!("Qwen split over 2 workers vs on the host, C2: latents max-abs {max:.2e} rel {rel:.2e}");
    assert!(rel <= 1e-6, "rel {rel:.2e}");
    assert!(sharded.report.text_encoder_wall_seconds.is_some(), "no text job ran");
    for r in &sharded.report.ranks {
        let phases: Vec<&str> = r.run.phases.iter().map(|p| p.name.as_str()).collect();
        println!("rank {}: Qwen shard {} B, phases {phases:?}", r.run.rank, r.text_encoder_weights_bytes);
        assert!(r.text_encoder_weights_bytes > 0 && phases.contains(&"text_encode"), "rank {}: {phases:?}", r.run.rank);
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2, "one cache entry per encoded text");

    let mut fresh = Session::new(cached());
    let mut stages = Vec::new();
    let again = fresh
        .generate(&req, &mut |e| {
            if let JobEvent::Stage { message } = e {
                stages.push(message.clone());
            }
        })
        .unwrap();
    fresh.shutdown();
    assert!(!stages.iter().any(|m| m.contains("Qwen2.5-VL")), "the cache was not used: {stages:?}");
    assert!(again.report.text_encoder_wall_seconds.is_none(), "a text job ran on cached prompts");
    assert_eq!(errors(&again.latents, &sharded.latents).0, 0.0, "cached embeddings give other latents");
}

/// Prompt text on an HV1.5 folder with `text_encoder/` (Qwen2.5-VL) and `tokenizer/`: the session
/// encodes the prompt and the default empty negative on the host (chat template, crop,
/// `hidden_states[-3]`; diffusers parity in `parity_hv15_prompt`) and the workers' run equals the
/// single-device pipeline given those embeddings. Quoted text goes through the ByT5 glyph encoder
/// (`text_encoder_2/`, `tokenizer_2/`; refused in one line without them).
#[test]
fn hv15_prompt_text_is_encoded_by_the_session() {
    use tessera_engine::models::qwen25vl_text;
    use tessera_engine::pipeline::hv15::{Hv15Pipeline, PromptEmbeds};
    use tessera_engine::text::hv15::{mllm_embeds, MllmTokenizer, MAX_LENGTH};

    init_logging();
    let fixtures = case().join("..");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    with_prompt_text_encoder(root);
    let text = "A quiet lake at dawn, mist over the water, no text anywhere.";
    let mut req = request(6.0, ParallelPlan { ranks: 2, cfg_parallel: 2, vae_parallel: 2, ..Default::default() });
    req.model = root.to_path_buf();
    req.prompt = Prompt::Text(text.into());
    req.negative = None;
    let cache = tmp.path().join("prompt-cache");
    let cached = || SessionOptions { prompt_cache_dir: Some(cache.clone()), ..session_options() };
    let mut session = Session::new(cached());
    let g = session.generate(&req, &mut |_| {}).unwrap();
    // The embeddings went to the on-disk cache (the prompt and the empty negative); a new session
    // takes them from there without loading Qwen, and generates the same latents.
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 2, "one cache entry per encoded text");
    let mut fresh = Session::new(cached());
    let mut stages = Vec::new();
    let again = fresh
        .generate(&req, &mut |e| {
            if let JobEvent::Stage { message } = e {
                stages.push(message.clone());
            }
        })
        .unwrap();
    fresh.shutdown();
    assert!(!stages.iter().any(|m| m.contains("Qwen2.5-VL")), "the cache was not used: {stages:?}");
    assert_eq!(errors(&again.latents, &g.latents).0, 0.0, "cached embeddings give other latents");

    let tok = MllmTokenizer::from_path(&root.join("tokenizer")).unwrap();
    let qwen = qwen25vl_text::load(&root.join("text_encoder"), DType::F32, &Device::Cpu).unwrap();
    let embeds = |t: &str| PromptEmbeds {
        text: mllm_embeds(&qwen, &tok, t, MAX_LENGTH).unwrap().squeeze(0).unwrap(),
        glyph: None,
    };
    let pipe = Hv15Pipeline::load(root, DType::F32, &Device::Cpu).unwrap();
    let noise =
        tensor_io::read_tensor(&case().join("inputs.safetensors"), "latents", DType::F32, &Device::Cpu).unwrap();
    let want = pipe.denoise_t2v(&noise, 4, 6.0, None, &embeds(text), Some(&embeds(""))).unwrap();
    let (max, rel) = errors(&g.latents, &want);
    println!(
        "prompt text, C2: latents max-abs {max:.2e} rel {rel:.2e} vs the one-device pipeline on the same embeddings"
    );
    // The same embeddings and the same ops: CFG parallel computes each branch on one rank.
    assert!(rel <= 1e-6, "rel {rel:.2e}");

    // Quoted text needs the ByT5 glyph encoder: without text_encoder_2/ the session says so.
    let quoted = "a sign that says \"Hello World\" in a sunny park";
    req.prompt = Prompt::Text(quoted.into());
    let err = session.generate(&req, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("ByT5 glyph encoder") && err.contains("text_encoder_2/"), "{err}");
    // With it, the glyph stream is encoded on the host (diffusers parity in `parity_hv15_byt5`)
    // and the workers' run equals the one-device pipeline on the same two streams.
    for part in ["text_encoder_2", "tokenizer_2"] {
        std::os::unix::fs::symlink(fixtures.join("prompt").join(part).canonicalize().unwrap(), root.join(part))
            .unwrap();
    }
    let g = session.generate(&req, &mut |_| {}).unwrap();
    let glyph = tessera_engine::text::byt5::GlyphEncoder::load(root, &Device::Cpu).unwrap();
    let with_glyph = PromptEmbeds {
        glyph: Some(glyph.embeds(quoted, tessera_engine::text::byt5::MAX_LENGTH).unwrap().unwrap().squeeze(0).unwrap()),
        ..embeds(quoted)
    };
    let want = pipe.denoise_t2v(&noise, 4, 6.0, None, &with_glyph, Some(&embeds(""))).unwrap();
    let (max, rel) = errors(&g.latents, &want);
    println!("quoted prompt text (ByT5), C2: latents max-abs {max:.2e} rel {rel:.2e} vs the one-device pipeline");
    assert!(rel <= 1e-6, "rel {rel:.2e}");
    session.shutdown();
}
