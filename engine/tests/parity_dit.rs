//! Parity of the Wan DiT against diffusers (golden case `dit`: a 2-layer `WanTransformer3DModel`
//! with perturbed random weights, f32 on CPU), plus chunked-vs-naive attention and the
//! per-token-timestep path against a plain per-token reference.

use std::path::Path;

use std::sync::{Barrier, Mutex};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use tessera_engine::models::wan::transformer::attention::{
    naive_attention, Attention, AttentionBackend, ChunkedAttention,
};
use tessera_engine::models::wan::transformer::WanTransformer3DModel;
use tessera_engine::tensor_io::read_tensor;

const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/dit");
/// The second golden set (gen.py seed 1): other weights, 2×8×6 latents, 11 text tokens.
const CASE_SEED1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden-seed1/dit");

/// f32 CPU vs torch f32 CPU: the only differences are summation order in matmuls/reductions and
/// last-ulp differences of exp/sin/cos, which land around 1e-6..1e-5 relative; 1e-4 is the
/// project-wide f32 budget and leaves an order of magnitude of margin.
const REL_TOL: f64 = 1e-4;

fn errors(out: &Tensor, reference: &Tensor) -> Result<(f64, f64)> {
    let diff = (out.to_dtype(DType::F64)? - reference.to_dtype(DType::F64)?)?;
    let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    Ok((max_abs, norm(&diff)? / norm(&reference.to_dtype(DType::F64)?)?))
}

fn read_in(case: &str, file: &str, name: &str) -> Result<Tensor> {
    Ok(read_tensor(&Path::new(case).join(file), name, DType::F32, &Device::Cpu)?)
}

fn input(name: &str) -> Result<Tensor> {
    read_in(CASE, "inputs.safetensors", name)
}

fn output(name: &str) -> Result<Tensor> {
    read_in(CASE, "outputs.safetensors", name)
}

fn model_in(case: &str, attention: ChunkedAttention) -> Result<WanTransformer3DModel> {
    let dir = Path::new(case).join("transformer");
    Ok(WanTransformer3DModel::load(&dir, DType::F32, &Device::Cpu)?.with_attention(attention))
}

fn model(attention: ChunkedAttention) -> Result<WanTransformer3DModel> {
    model_in(CASE, attention)
}

fn check(name: &str, out: &Tensor, reference: &Tensor) -> Result<()> {
    assert_eq!(out.dims(), reference.dims(), "{name}: shape");
    let (max_abs, rel) = errors(out, reference)?;
    println!("dit {name}: max-abs {max_abs:.3e}, rel {rel:.3e} (tolerance {REL_TOL:.0e})");
    assert!(rel <= REL_TOL, "{name}: relative error {rel:.3e} > {REL_TOL:.0e} (max-abs {max_abs:.3e})");
    Ok(())
}

#[test]
fn dit_matches_diffusers_scalar_timestep() -> Result<()> {
    let m = model(ChunkedAttention::default())?;
    let out = m.forward(&input("latents")?, &input("timestep")?, &input("context")?)?;
    check("out", &out, &output("out")?)
}

#[test]
fn dit_matches_diffusers_per_token_timestep() -> Result<()> {
    let m = model(ChunkedAttention::default())?;
    let out = m.forward(&input("latents")?, &input("timestep_per_token")?, &input("context")?)?;
    check("out_per_token", &out, &output("out_per_token")?)
}

#[test]
fn dit_matches_diffusers_seed1() -> Result<()> {
    for attention in [ChunkedAttention::default(), ChunkedAttention::new(3, 4)] {
        let m = model_in(CASE_SEED1, attention)?;
        let (latents, context) = (
            read_in(CASE_SEED1, "inputs.safetensors", "latents")?,
            read_in(CASE_SEED1, "inputs.safetensors", "context")?,
        );
        for (t, reference) in [("timestep", "out"), ("timestep_per_token", "out_per_token")] {
            let out = m.forward(&latents, &read_in(CASE_SEED1, "inputs.safetensors", t)?, &context)?;
            let name = format!("seed1 {reference} ({}x{} attention blocks)", attention.q_block, attention.kv_block);
            check(&name, &out, &read_in(CASE_SEED1, "outputs.safetensors", reference)?)?;
        }
    }
    Ok(())
}

/// Tiny blocks force the multi-block online softmax through the whole model (36 tokens, 16 text
/// tokens): the result must still match diffusers.
#[test]
fn dit_matches_diffusers_with_small_attention_blocks() -> Result<()> {
    let m = model(ChunkedAttention::new(5, 7))?;
    let out = m.forward(&input("latents")?, &input("timestep_per_token")?, &input("context")?)?;
    check("out_per_token (5x7 attention blocks)", &out, &output("out_per_token")?)?;
    let out = m.forward(&input("latents")?, &input("timestep")?, &input("context")?)?;
    check("out (5x7 attention blocks)", &out, &output("out")?)
}

/// All-gathers k/v across the ranks of a thread-simulated sequence-parallel group, then attends
/// the local queries to the whole sequence: the communication pattern of ring/all-gather sequence
/// parallelism, enough to exercise the block's shard seam.
struct SharedKv {
    slots: Mutex<Vec<Option<(Tensor, Tensor)>>>,
    barrier: Barrier,
}

struct GatherKv<'a> {
    shared: &'a SharedKv,
    rank: usize,
}

impl AttentionBackend for GatherKv<'_> {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let poisoned = |_| candle_core::Error::Msg("kv slots poisoned".into());
        self.shared.slots.lock().map_err(poisoned)?[self.rank] = Some((k.clone(), v.clone()));
        self.shared.barrier.wait();
        let (ks, vs): (Vec<Tensor>, Vec<Tensor>) =
            self.shared.slots.lock().map_err(poisoned)?.iter().flatten().cloned().unzip();
        // Second wait: nobody overwrites a slot (next block) before every rank has read them.
        self.shared.barrier.wait();
        ChunkedAttention::default().attend(q, &Tensor::cat(&ks, 2)?, &Tensor::cat(&vs, 2)?)
    }
}

/// Sequence-sharded blocks (two simulated ranks, split inside a latent frame so a modulation run
/// is cut) compose to the whole-sequence forward.
#[test]
fn dit_sequence_shards_compose() -> Result<()> {
    let m = model(ChunkedAttention::default())?;
    let (latents, t, ctx) = (input("latents")?, input("timestep_per_token")?, input("context")?);
    let full = m.forward(&latents, &t, &ctx)?;
    let p = m.stem().prepare(&latents, &t, &ctx, None)?;
    let len = p.tokens.dim(1)?;
    let shards = [(0, 13), (13, len - 13)]; // latent frames are 12 tokens: frame 1 is cut
    let shared = SharedKv { slots: Mutex::new(vec![None, None]), barrier: Barrier::new(2) };
    let cross = ChunkedAttention::default();
    let outs = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .enumerate()
            .map(|(rank, &(start, n))| {
                let (p, m, shared, cross) = (&p, &m, &shared, &cross);
                scope.spawn(move || -> candle_core::Result<Tensor> {
                    let backend = GatherKv { shared, rank };
                    let attention = Attention { self_attn: &backend, cross_attn: cross };
                    let (time, rope) = (p.time.narrow(start, n)?, p.rope.narrow(start, n)?);
                    let mut xs = p.tokens.narrow(1, start, n)?;
                    for block in m.blocks() {
                        xs = block.forward(&xs, &p.context, &time, &rope, attention)?;
                    }
                    Ok(xs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("shard thread panicked")).collect::<candle_core::Result<Vec<_>>>()
    })?;
    let sharded = m.stem().head(&Tensor::cat(&outs, 1)?, &p.time, p.grid)?;
    let (max_abs, rel) = errors(&sharded, &full)?;
    println!("dit sharded vs whole: max-abs {max_abs:.3e}, rel {rel:.3e}");
    // Same arithmetic up to the attention's block order: float-reassociation level only.
    assert!(rel <= 1e-5, "sharded forward differs: rel {rel:.3e}");
    Ok(())
}

/// The chunked online softmax equals the naive one, for block sizes that divide the lengths, leave
/// ragged last blocks, and cover everything in one block.
#[test]
fn chunked_attention_equals_naive() -> Result<()> {
    let dev = Device::Cpu;
    let (b, h, lq, lk, hd) = (2, 3, 37, 53, 16);
    // Wide logits (×3) so the running max really moves between key blocks.
    let q = (Tensor::randn(0f32, 1., (b, h, lq, hd), &dev)? * 3.0)?;
    let k = Tensor::randn(0f32, 1., (b, h, lk, hd), &dev)?;
    let v = Tensor::randn(0f32, 1., (b, h, lk, hd), &dev)?;
    let reference = naive_attention(&q, &k, &v)?;
    for (qb, kb) in [(1, 1), (8, 16), (37, 53), (64, 64), (5, 52), (13, 7)] {
        let out = ChunkedAttention::new(qb, kb).attend(&q, &k, &v)?;
        let (max_abs, rel) = errors(&out, &reference)?;
        println!("chunked attention q_block {qb} kv_block {kb}: max-abs {max_abs:.3e}, rel {rel:.3e}");
        // Pure f32 reassociation of a 53-term softmax: ~1e-7.
        assert!(rel <= 1e-5 && max_abs <= 1e-5, "blocks {qb}x{kb}: rel {rel:.3e}, max-abs {max_abs:.3e}");
    }
    Ok(())
}
