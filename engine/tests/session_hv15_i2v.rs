//! HunyuanVideo 1.5 image-to-video through the engine's front door on real worker processes: a
//! [`Session`] runs diffusers' `HunyuanVideo15ImageToVideoPipeline` case
//! (`tests/fixtures/hv15/pipeline_i2v`: a 96×128 image at its bucket, 5 frames, 4 steps, given
//! noise and prompt embeddings) on one rank, under Ulysses 2 and CFG parallel 2 + FSDP 2 (halo VAE
//! over 2 ranks: the image is encoded patch-parallel, SigLIP runs on rank 0 and is broadcast), and
//! the step-distilled `transformer_meanflow` (guidance 1, shift 7, `timestep_r`) on one rank and
//! Ulysses 2. Every plan's latents equal the single rank's within f32 rounding and diffusers'
//! within the golden tolerance (1e-4 relative after 4 steps of CFG 6).

mod multiprocess_util;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use multiprocess_util::{errors, init_logging, session_options};
use tessera_engine::api::{GenerateParams, GenerationRequest, ParallelPlan, Prompt, Session, VaeMode};
use tessera_engine::tensor_io;

fn case() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hv15/pipeline_i2v"))
}

fn request(model: &Path, guidance: f64, shift: Option<f64>, plan: ParallelPlan) -> GenerationRequest {
    let inputs = case().join("inputs.safetensors");
    let params = GenerateParams {
        height: 96,
        width: 128,
        frames: 5,
        steps: 4,
        guidance,
        guidance_2: None,
        shift,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    GenerationRequest {
        negative: Some(Prompt::Embeds(inputs.clone())),
        latents: Some(inputs.clone()),
        image: Some(case().join("image.png")),
        plan,
        decode: false,
        ..GenerationRequest::new(model.to_path_buf(), Prompt::Embeds(inputs), params)
    }
}

fn golden(name: &str) -> Tensor {
    tensor_io::read_tensor(&case().join("outputs.safetensors"), name, DType::F32, &Device::Cpu).unwrap()
}

fn halo(ranks: usize, ulysses: usize, cfg_parallel: usize, fsdp: usize) -> ParallelPlan {
    ParallelPlan { ranks, ulysses, cfg_parallel, fsdp, vae_parallel: 2, vae_mode: VaeMode::Halo, ..Default::default() }
}

#[test]
fn hv15_i2v_on_workers_matches_one_rank_and_diffusers() {
    init_logging();
    let mut session = Session::new(session_options());
    let want = golden("final_latents_g6");
    let single = session.generate(&request(&case(), 6.0, None, ParallelPlan::default()), &mut |_| {}).unwrap();
    let (max, rel) = errors(&single.latents, &want);
    println!("I2V one rank: latents max-abs {max:.2e} rel {rel:.2e} vs diffusers");
    assert!(rel <= 1e-4, "latents rel {rel:.2e}");
    for (name, plan) in [("U2", halo(2, 2, 1, 1)), ("C2 + F2", halo(2, 1, 2, 2))] {
        let g = session.generate(&request(&case(), 6.0, None, plan), &mut |_| {}).unwrap();
        let (max, rel) = errors(&g.latents, &single.latents);
        println!("I2V {name} + halo VAE 2: latents max-abs {max:.2e} rel {rel:.2e} vs one rank");
        // The halo encode equals the untiled one within f32 rounding; the rest is the T2V plans' ops.
        assert!(rel <= 1e-5, "{name}: latents rel {rel:.2e} vs one rank");
        let (max, rel) = errors(&g.latents, &want);
        println!("I2V {name} + halo VAE 2: latents max-abs {max:.2e} rel {rel:.2e} vs diffusers");
        assert!(rel <= 1e-4, "{name}: latents rel {rel:.2e} vs diffusers");
    }

    // The step-distilled transformer: a folder whose transformer/ is transformer_meanflow/.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for entry in ["model_index.json", "scheduler", "guider", "vae", "image_encoder", "feature_extractor"] {
        std::os::unix::fs::symlink(case().join(entry).canonicalize().unwrap(), root.join(entry)).unwrap();
    }
    std::os::unix::fs::symlink(case().join("transformer_meanflow").canonicalize().unwrap(), root.join("transformer"))
        .unwrap();
    let want = golden("final_latents_meanflow");
    let one = session.generate(&request(root, 1.0, Some(7.0), ParallelPlan::default()), &mut |_| {}).unwrap();
    let (max, rel) = errors(&one.latents, &want);
    println!("meanflow one rank: latents max-abs {max:.2e} rel {rel:.2e} vs diffusers");
    assert!(rel <= 1e-4, "meanflow latents rel {rel:.2e}");
    let u2 = session.generate(&request(root, 1.0, Some(7.0), halo(2, 2, 1, 1)), &mut |_| {}).unwrap();
    let (max, rel) = errors(&u2.latents, &one.latents);
    println!("meanflow U2: latents max-abs {max:.2e} rel {rel:.2e} vs one rank");
    assert!(rel <= 1e-5, "meanflow U2 rel {rel:.2e}");

    // An image whose bucket is not the run's size is refused in one line.
    let mut bad = request(&case(), 6.0, None, ParallelPlan::default());
    bad.params.height = 112;
    bad.params.width = 112;
    bad.latents = None;
    let err = session.generate(&bad, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("bucket 96×128"), "{err}");
    session.shutdown();
}
