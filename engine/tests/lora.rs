//! LoRAs merged at load, against diffusers' `load_lora_weights` + `set_adapters` (golden case
//! `lora`; its case.json records how diffusers mapped, scaled and dropped every key):
//!
//! - single forwards of the TI2V transformer with lightx2v (0.7), PEFT (0.7), musubi (1.0) and a
//!   stack (lightx2v 0.7 + PEFT 0.5); each A14B expert with its own LoRA (`@high` 1.0, `@low` 0.6);
//! - FSDP 2 (each rank merges only its slice) equal to one device;
//! - the one-line errors: keys that match nothing, rank mismatch, another architecture, `@low` on
//!   a one-transformer model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use tessera_engine::model_spec::{LoraSpec, ModelFiles, ModelSpec};
use tessera_engine::models::wan::transformer::{ShardOptions, ShardedTransformer, WanTransformer3DModel};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::tensor_io::read_tensor;

const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/lora");

/// diffusers runs the LoRAs unfused through PEFT (`W x + s·B(A x)`), Tessera merges `W + s·B A`
/// in f32: the same sums in another order, ~1e-7 relative (case.json's own merged-by-hand check
/// lands at 2e-7). 1e-4 is the bound and the project's f32 budget.
const REL_TOL: f64 = 1e-4;

fn path(name: &str) -> PathBuf {
    Path::new(CASE).join(name)
}

fn t(file: &str, name: &str) -> Result<Tensor> {
    Ok(read_tensor(&path(file), name, DType::F32, &Device::Cpu)?)
}

fn errors(out: &Tensor, reference: &Tensor) -> Result<(f64, f64)> {
    let diff = (out.to_dtype(DType::F64)? - reference.to_dtype(DType::F64)?)?;
    let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    Ok((max_abs, norm(&diff)? / norm(&reference.to_dtype(DType::F64)?)?))
}

fn lora(spec: &str) -> LoraSpec {
    let s = spec.replacen("LORA:", &format!("{CASE}/"), 1);
    s.parse().unwrap()
}

fn open(pipeline: &str, loras: &[&str]) -> Result<ModelSpec> {
    let files = ModelFiles { loras: loras.iter().map(|l| lora(l)).collect(), ..ModelFiles::default() };
    Ok(ModelSpec::open(&path(pipeline), &files)?)
}

fn check(name: &str, out: &Tensor, reference: &Tensor) -> Result<()> {
    let (max_abs, rel) = errors(out, reference)?;
    println!("{name}: max-abs {max_abs:.3e}, rel {rel:.3e} (tolerance {REL_TOL:.0e})");
    assert!(rel <= REL_TOL, "{name}: relative error {rel:.3e} > {REL_TOL:.0e}");
    Ok(())
}

fn expert_forward(spec: &ModelSpec, expert: usize, x: &str, context: &str) -> Result<Tensor> {
    let cfg = if expert == 0 { &spec.transformer } else { spec.transformer_2.as_ref().unwrap() };
    let vb = spec.transformer_weights(expert)?.var_builder(DType::F32, &Device::Cpu)?;
    let model = WanTransformer3DModel::new(cfg, vb)?;
    Ok(model.forward(
        &t("inputs.safetensors", x)?,
        &t("inputs.safetensors", "timestep")?,
        &t("inputs.safetensors", context)?,
    )?)
}

#[test]
fn every_dialect_matches_diffusers() -> Result<()> {
    let cases: [(&str, &[&str], &str); 5] = [
        ("no LoRA", &[], "out_base"),
        ("lightx2v 0.7", &["LORA:lora_lightx2v.safetensors:0.7"], "out_lightx2v"),
        ("peft 0.7", &["LORA:lora_peft.safetensors:0.7"], "out_peft"),
        ("musubi 1.0", &["LORA:lora_musubi.safetensors"], "out_musubi"),
        (
            "lightx2v 0.7 + peft 0.5",
            &["LORA:lora_lightx2v.safetensors:0.7", "LORA:lora_peft.safetensors:0.5"],
            "out_stack",
        ),
    ];
    let base = t("outputs.safetensors", "out_base")?;
    for (name, loras, reference) in cases {
        let spec = open("pipeline_ti2v", loras)?;
        let out = expert_forward(&spec, 0, "x", "context")?;
        let (_, moved) = errors(&t("outputs.safetensors", reference)?, &base)?;
        println!("{name}: the LoRA moves diffusers' output by {moved:.3e} relative");
        check(name, &out, &t("outputs.safetensors", reference)?)?;
    }
    Ok(())
}

#[test]
fn a14b_experts_take_their_own_loras() -> Result<()> {
    let spec = open("pipeline_a14b", &["LORA:lora_high.safetensors:1.0@high", "LORA:lora_low.safetensors:0.6@low"])?;
    check(
        "A14B transformer + lora_high@high 1.0",
        &expert_forward(&spec, 0, "a14b_x", "a14b_context")?,
        &t("outputs.safetensors", "out_high")?,
    )?;
    check(
        "A14B transformer_2 + lora_low@low 0.6",
        &expert_forward(&spec, 1, "a14b_x", "a14b_context")?,
        &t("outputs.safetensors", "out_low")?,
    )?;
    Ok(())
}

/// Each FSDP rank merges its own slice (rows of `up` its slice touches, times `down`): the gathered
/// blocks are the single-device merge, so the forward equals it (and diffusers').
#[test]
fn fsdp_2_with_a_lora_equals_one_device() -> Result<()> {
    let spec = open("pipeline_ti2v", &["LORA:lora_lightx2v.safetensors:0.7", "LORA:lora_musubi.safetensors:0.3"])?;
    let weights = spec.transformer_weights(0)?;
    let one = expert_forward(&spec, 0, "x", "context")?;
    for f in [2, 3] {
        let comms = ThreadComm::world(f, Duration::from_secs(30));
        let outs: Vec<Tensor> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|comm| {
                    let (spec, weights) = (&spec, &weights);
                    s.spawn(move || -> Result<Tensor> {
                        let fsdp: Arc<dyn Collective> = Arc::new(comm);
                        let opts = ShardOptions { fsdp: Some(fsdp), ..Default::default() };
                        let model =
                            ShardedTransformer::load(&spec.transformer, weights, DType::F32, &Device::Cpu, opts)?;
                        Ok(model.forward(
                            &t("inputs.safetensors", "x")?,
                            &t("inputs.safetensors", "timestep")?,
                            &t("inputs.safetensors", "context")?,
                        )?)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect::<Result<Vec<_>>>()
        })?;
        for (r, out) in outs.iter().enumerate() {
            let (max_abs, rel) = errors(out, &one)?;
            println!("FSDP {f} rank {r} with two LoRAs: vs one device max-abs {max_abs:.3e}, rel {rel:.3e}");
            // Slices of `up @ down` are the same dot products over the rank; the matmul blocking
            // of a row subset may round differently in the last bit: f32 ulps.
            assert!(rel <= 1e-6, "FSDP {f} rank {r}: {rel:.3e}");
        }
    }
    Ok(())
}

fn write_lora(path: &Path, tensors: &[(&str, Vec<usize>)]) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, s)| Ok((n.to_string(), Tensor::ones(s.as_slice(), DType::F32, &Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

#[test]
fn bad_loras_are_refused_in_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = |loras: &[&str], pipeline: &str| -> String {
        let e = open(pipeline, loras).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        println!("{e}");
        e
    };
    // Keys that match nothing: a block the model does not have, and a text-encoder key.
    let stray = dir.path().join("stray.safetensors");
    write_lora(
        &stray,
        &[
            ("diffusion_model.blocks.7.self_attn.q.lora_down.weight", vec![2, 48]),
            ("diffusion_model.blocks.7.self_attn.q.lora_up.weight", vec![48, 2]),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![2, 8]),
        ],
    )?;
    let e = err(&[&format!("{}", stray.display())], "pipeline_ti2v");
    assert!(e.contains("3 of its keys match nothing") && e.contains("blocks.7.self_attn.q"), "{e}");
    // Rank mismatch.
    let rank = dir.path().join("rank.safetensors");
    write_lora(
        &rank,
        &[
            ("diffusion_model.blocks.0.self_attn.q.lora_down.weight", vec![4, 48]),
            ("diffusion_model.blocks.0.self_attn.q.lora_up.weight", vec![48, 2]),
        ],
    )?;
    let e = err(&[&format!("{}", rank.display())], "pipeline_ti2v");
    assert!(e.contains("rank 4") && e.contains("rank 2"), "{e}");
    // Another architecture: the A14B-expert LoRA's head delta on the TI2V model (other out channels).
    let e = err(&["LORA:lora_high.safetensors"], "pipeline_ti2v");
    assert!(e.contains("another architecture") && e.contains("proj_out"), "{e}");
    // @low on a model with one transformer.
    let e = err(&["LORA:lora_lightx2v.safetensors@low"], "pipeline_ti2v");
    assert!(e.contains("@low") && e.contains("one transformer"), "{e}");
    // Not a LoRA at all.
    let e = err(&[&format!("{CASE}/inputs.safetensors")], "pipeline_ti2v");
    assert!(e.contains("match nothing"), "{e}");
    Ok(())
}
