//! Parity of the HunyuanVideo 1.5 transformer against diffusers on the tiny golden model
//! (`tests/fixtures/hv15/dit`, written by `scripts/gen_hv15_dit.py`): T2V, I2V, no glyph text, the
//! meanflow (step-distilled) twin, and diffusers' own trimmed calls — all from the *valid* context
//! rows only, which is what this port always runs; plus the stems and block 0 to localise errors.
//!
//! `HV15_DIT_CASE=<dir>` runs the same checks on another case of the same layout (e.g. the shared
//! golden `hv15/dit` with its full 2048-wide glyph projection).
//!
//! Tolerance: f32 CPU references; a faithful f32 port differs in summation order only (~1e-6
//! relative). 1e-4 is the project's f32 budget; a wrong gate, chunk order or RoPE pair moves the
//! output by 1e-2 or more (t2v vs i2v differ by 1.5 max-abs, t2v vs no-glyph by 2e-2).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use tessera_engine::models::hv15::transformer::embeddings::rope_tables;
use tessera_engine::models::hv15::transformer::ulysses::LocalJoint;
use tessera_engine::models::hv15::transformer::{self, valid_rows, Context, HunyuanVideo15Transformer3DModel};
use tessera_engine::models::wan::transformer::attention::ChunkedAttention;
use tessera_engine::tensor_io;

const TOL: f64 = 1e-4;

/// (name, model, latents, timestep_r, context, references it must match).
type Run<'a> =
    (&'a str, &'a HunyuanVideo15Transformer3DModel, &'a Tensor, Option<&'a Tensor>, Context<'a>, &'a [&'a str]);

fn case_dir() -> PathBuf {
    match std::env::var_os("HV15_DIT_CASE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/dit"),
    }
}

#[test]
fn hv15_transformer_matches_diffusers() {
    let dev = Device::Cpu;
    let dir = case_dir();
    println!("case {}", dir.display());
    let model = transformer::load(&dir.join("transformer"), DType::F32, &dev).unwrap();
    let mf = transformer::load(&dir.join("transformer_meanflow"), DType::F32, &dev).unwrap();
    let all = |f: &str| tensor_io::read_all(&dir.join(f), &dev).unwrap();
    let (i, o) = (all("inputs.safetensors"), all("outputs.safetensors"));
    let f32 = |k: &str| i[k].to_dtype(DType::F32).unwrap();
    let text = valid_rows(&f32("context").get(0).unwrap(), &f32("context_mask").get(0).unwrap()).unwrap().unwrap();
    let glyph = valid_rows(&f32("byt5").get(0).unwrap(), &f32("byt5_mask").get(0).unwrap()).unwrap().unwrap();
    let image = f32("image_embeds").get(0).unwrap();
    let (t, t_r) = (f32("timestep"), f32("timestep_r"));
    let (x_t2v, x_i2v) = (f32("x_t2v"), f32("x_i2v"));
    let t2v = Context { text: &text, glyph: Some(&glyph), image: None };
    let i2v = Context { text: &text, glyph: Some(&glyph), image: Some(&image) };
    let nobyt5 = Context { text: &text, glyph: None, image: None };

    // Stems and block 0 first: they localise an error.
    let temb = model.time_embedding(&t, None).unwrap();
    assert_close("time embedding", &temb, &o["dbg_t2v_temb"], TOL);
    let xs = model.embed_video(&x_t2v.get(0).unwrap()).unwrap();
    assert_close("x_embedder", &xs, &o["dbg_t2v_x_embed"].get(0).unwrap(), TOL);
    let ctx = model.context_tokens(&t2v, &t).unwrap();
    let (n_glyph, n_text) = (glyph.dim(0).unwrap(), text.dim(0).unwrap());
    let cte = model.cond_type_embed();
    let refined = ctx.narrow(0, n_glyph, n_text).unwrap().broadcast_sub(&cte.get(0).unwrap()).unwrap();
    let want = o["dbg_t2v_refiner"].get(0).unwrap().narrow(0, 0, n_text).unwrap();
    assert_close("token refiner (valid rows)", &refined, &want, TOL);
    let glyph_proj = ctx.narrow(0, 0, n_glyph).unwrap().broadcast_sub(&cte.get(1).unwrap()).unwrap();
    let want = o["dbg_t2v_byt5_proj"].get(0).unwrap().narrow(0, 0, n_glyph).unwrap();
    assert_close("glyph projection (valid rows)", &glyph_proj, &want, TOL);
    // RoPE: diffusers stores cos/sin repeated per pair; ours holds one value per pair.
    let (_, _, nt, nh, nw) = x_t2v.dims5().unwrap();
    let rope = rope_tables(model.config(), (nt, nh, nw), &dev).unwrap();
    let pairs = |t: &Tensor| t.unsqueeze(2).unwrap().repeat((1, 1, 2)).unwrap().flatten_from(1).unwrap();
    assert_close("rope cos", &pairs(&rope.cos), &o["dbg_rope_cos"], TOL);
    assert_close("rope sin", &pairs(&rope.sin), &o["dbg_rope_sin"], TOL);
    let core = ChunkedAttention::default();
    let attention = LocalJoint(&core);
    let (bx, bc) = model.blocks()[0].forward(&xs, &ctx, &temb, &rope, &attention).unwrap();
    assert_close("block 0 video", &bx, &o["dbg_t2v_block0_hidden"].get(0).unwrap(), TOL);
    // Valid rows lead the context (T2V: 5 glyph then 9 text); the rest is padding.
    let want = o["dbg_t2v_block0_context"].get(0).unwrap().narrow(0, 0, n_glyph + n_text).unwrap();
    assert_close("block 0 context (valid rows)", &bc, &want, TOL);

    let runs: [Run<'_>; 4] = [
        ("t2v", &model, &x_t2v, None, t2v, &["out_t2v", "out_t2v_trimmed"]),
        ("i2v", &model, &x_i2v, None, i2v, &["out_i2v", "out_i2v_trimmed"]),
        ("no glyph", &model, &x_t2v, None, nobyt5, &["out_nobyt5", "out_nobyt5_trimmed"]),
        ("meanflow", &mf, &x_i2v, Some(&t_r), i2v, &["out_meanflow"]),
    ];
    for (name, m, x, tr, c, wants) in runs {
        let got = m.forward(x, &t, tr, &[c]).unwrap();
        for w in wants {
            assert_close(&format!("{name} vs {w}"), &got, &o[*w], TOL);
        }
    }
}
