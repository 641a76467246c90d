//! LoRAs and the weights a session's workers keep between runs: a [`Session`] on 2 worker processes
//! (Ulysses 2 × FSDP 2) runs the golden `lora` TI2V pipeline with the lightx2v LoRA (equal to
//! diffusers' `video_lightx2v`), reuses the merged weights for the same request, and reloads when
//! the LoRA's strength changes or the LoRA is dropped (the files and LoRAs key the resident
//! weights), giving diffusers' LoRA-free video again.

mod multiprocess_util;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use multiprocess_util::init_logging;
use tessera_engine::api::{
    GenerateParams, GenerationRequest, LoraSpec, ModelFiles, ParallelPlan, Prompt, Session, SessionOptions,
};
use tessera_engine::tensor_io;

fn case() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/lora"))
}

fn request(loras: &[&str]) -> GenerationRequest {
    let inputs = case().join("inputs.safetensors");
    let params = GenerateParams {
        height: 64,
        width: 96,
        frames: 9,
        steps: 4,
        guidance: 4.0,
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    let loras: Vec<LoraSpec> =
        loras.iter().map(|l| format!("{}/{l}", case().display()).parse::<LoraSpec>().unwrap()).collect();
    GenerationRequest {
        negative: Some(Prompt::Embeds(inputs.clone())),
        latents: Some(inputs.clone()),
        plan: ParallelPlan { ranks: 2, ulysses: 2, fsdp: 2, ..ParallelPlan::default() },
        files: ModelFiles { loras, ..ModelFiles::default() },
        ..GenerationRequest::new(case().join("pipeline_ti2v"), Prompt::Embeds(inputs), params)
    }
}

fn rel(got: &Tensor, want: &Tensor) -> f64 {
    let d = (got - want).unwrap().to_dtype(DType::F64).unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    norm(&d) / norm(&want.to_dtype(DType::F64).unwrap())
}

#[test]
fn loras_key_the_resident_weights() {
    init_logging();
    let mut session = Session::new(SessionOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_tessera-worker").into()),
        threads_per_rank: Some(1),
        ..SessionOptions::default()
    });
    let golden = |name: &str| {
        tensor_io::read_tensor(&case().join("outputs.safetensors"), name, DType::F32, &Device::Cpu).unwrap()
    };
    let mut run = |loras: &[&str]| {
        let g = session.generate(&request(loras), &mut |_| {}).unwrap();
        let reused = g.report.ranks.iter().all(|r| r.denoise.as_ref().is_some_and(|d| d.stats.weights_reused));
        (g.video.unwrap().frames, reused)
    };
    let (first, reused) = run(&["lora_lightx2v.safetensors:0.7"]);
    assert!(!reused, "the first run loads");
    let err = rel(&first, &golden("video_lightx2v"));
    println!("lightx2v 0.7 on 2 workers (Ulysses 2 × FSDP 2): video vs diffusers rel {err:.3e}");
    // f32 pipeline vs diffusers' f32 pipeline with the unfused LoRA (see lora.rs): ~1e-7..1e-6.
    assert!(err <= 1e-4, "{err:.3e}");
    let (again, reused) = run(&["lora_lightx2v.safetensors:0.7"]);
    assert!(reused, "the same model, LoRAs and plan reuse the merged weights");
    assert_eq!(rel(&again, &first), 0.0);
    let (weaker, reused) = run(&["lora_lightx2v.safetensors:0.5"]);
    assert!(!reused, "another strength is other weights");
    assert!(rel(&weaker, &first) > 1e-3, "a weaker LoRA changes the video");
    let (none, reused) = run(&[]);
    assert!(!reused, "dropping the LoRA reloads the plain weights");
    let base_gap = rel(&none, &first);
    println!("without the LoRA the video moves by {base_gap:.3e} relative from the LoRA run");
    assert!(base_gap > 1e-3);
}
