//! The Wan transformer on every configuration of the sweep (`tests/fixtures/sweep/transformer`:
//! head dims 6–40 with every residue mod 6, 1–5 heads, freq/ffn/text dims, patch sizes, odd token
//! grids, text lengths 1–512, batch 2, per-token timesteps, the Wan2.1 image branch) against
//! diffusers 0.42.1, on one device and under a parallel plan (Ulysses across the heads, FSDP 2) on
//! ranks that are threads of this process.
//!
//! Tolerance: 3e-6 relative. Both sides are f32 on CPU with the same bf16-rounded weights; what
//! remains is summation order in the matmuls and softmax, measured at 1e-7..2.5e-7, and, where
//! torch's f32 `exp` in the timestep sinusoid is one ulp off the correctly rounded value Tessera
//! uses (one frequency of 32 at `freq_dim` 64, two of 128 at 256), 1.3e-6 and 6.6e-7 (rerunning
//! diffusers with a correctly rounded `exp` gives exactly those numbers). A RoPE pair on the wrong
//! axis (the old split of head dims ≡ 4 mod 6) cost 8.1e-6 (head dim 34) to 1.0e-2 (head dim 10)
//! on this sweep, so the tolerance stays below that; the head-dim-16 case is held to 1e-6.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::sweep::{self, Case, Report};
use tessera_engine::models::wan::transformer::{ShardOptions, ShardedTransformer, WanTransformer3DModel};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::parallel::Rank;

const TOL: f64 = 3e-6;

fn load(case: &Case) -> candle_core::Result<WanTransformer3DModel> {
    WanTransformer3DModel::load(&case.dir.join("transformer"), DType::F32, &Device::Cpu)
}

/// `(timestep input, reference output)` pairs: one timestep per batch element, and per token.
const RUNS: [(&str, &str); 2] = [("timestep", "out"), ("timestep_per_token", "out_per_token")];

#[test]
fn every_transformer_config_matches_diffusers() {
    let cases = sweep::cases("transformer");
    let mut report = Report::default();
    for case in &cases {
        let model = match load(case) {
            Ok(m) => m,
            Err(e) => {
                report.error(&case.name, e);
                continue;
            }
        };
        let image = case.inputs.get("image_embeds");
        for (t, out) in RUNS {
            let what = format!("{} {out}", case.name);
            match model.forward_with_image(case.input("latents"), case.input(t), case.input("context"), image) {
                Ok(got) => {
                    report.check(&what, &got, case.output(out), TOL);
                }
                Err(e) => report.error(&what, e),
            }
        }
    }
    report.finish("transformer", 2 * cases.len());
}

/// The configuration (the golden `dit` with head dim 16, whose RoPE split is uneven) is
/// exact to f32 rounding (1.6e-7): before the split followed diffusers 0.42.1 it was 2.3e-4 here.
#[test]
fn head_dim_16_is_exact() {
    let case = sweep::cases("transformer").into_iter().find(|c| c.name == "hd16_h4_golden").expect("case listed");
    let model = load(&case).unwrap();
    let mut report = Report::default();
    for (t, out) in RUNS {
        let got = model.forward(case.input("latents"), case.input(t), case.input("context")).unwrap();
        // 1e-6: measured 1e-7; summation order in f32 cannot reach 1e-6 on two layers.
        report.check(&format!("hd16 {out}"), &got, case.output(out), 1e-6);
    }
    report.finish("head-dim-16", 2);
}

/// The smallest factor > 1 of the head count: the Ulysses degree (it must divide the heads).
fn ulysses_degree(heads: usize) -> usize {
    (2..=heads).find(|d| heads.is_multiple_of(*d)).unwrap_or(1)
}

/// Runs `case` on `u · f` thread ranks (Ulysses groups of `u` consecutive ranks, FSDP groups of
/// `f`), every rank loading the checkpoint itself; returns each rank's output per timestep run.
fn run_parallel(case: &Case, u: usize, f: usize) -> candle_core::Result<Vec<Vec<Tensor>>> {
    let n = u.max(f);
    let dir = case.dir.join("transformer");
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadComm::world(n, Duration::from_secs(60))
            .into_iter()
            .map(|comm| {
                let dir = &dir;
                s.spawn(move || -> candle_core::Result<Vec<Tensor>> {
                    let world: Arc<dyn Collective> = Arc::new(comm);
                    let r = world.rank().0;
                    let group = |size: usize| {
                        let base = r / size * size;
                        world.sub_group(&(base..base + size).map(Rank).collect::<Vec<_>>())
                    };
                    let opts = ShardOptions { fsdp: Some(group(f)?), ulysses: Some(group(u)?), ..Default::default() };
                    let model = ShardedTransformer::load_dir(dir, DType::F32, &Device::Cpu, opts)?;
                    RUNS.iter()
                        .map(|(t, _)| model.forward(case.input("latents"), case.input(t), case.input("context")))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
    })
}

/// Every configuration under Ulysses (degree = smallest factor of the head count, sequences padded
/// where it does not divide the tokens) and under FSDP 2, against diffusers, on every rank.
#[test]
fn every_transformer_config_matches_diffusers_under_a_parallel_plan() {
    let cases = sweep::cases("transformer");
    let mut report = Report::default();
    let mut expected = 0;
    for case in &cases {
        if case.inputs.contains_key("image_embeds") {
            // The sharded runner serves Wan2.2 (TI2V, A14B), which has no image branch; the Wan2.1
            // image case is covered on one device above.
            println!("{}: one device only (the sharded runner has no Wan2.1 image branch)", case.name);
            continue;
        }
        let heads = case.desc["config"]["num_attention_heads"].as_u64().expect("heads") as usize;
        let u = ulysses_degree(heads);
        let mut plans = vec![(1, 2)];
        if u > 1 {
            plans.push((u, 1));
        }
        for (u, f) in plans {
            let ranks = u.max(f);
            expected += 2 * ranks;
            match run_parallel(case, u, f) {
                Ok(per_rank) => {
                    for (r, outs) in per_rank.iter().enumerate() {
                        for ((_, out), got) in RUNS.iter().zip(outs) {
                            let what = format!("{} {out} ulysses {u} fsdp {f} rank {r}", case.name);
                            report.check(&what, got, case.output(out), TOL);
                        }
                    }
                }
                Err(e) => report.error(&format!("{} ulysses {u} fsdp {f}", case.name), e),
            }
        }
    }
    report.finish("transformer (parallel)", expected);
}
