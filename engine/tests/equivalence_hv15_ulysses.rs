//! Ulysses sequence parallelism of the HunyuanVideo 1.5 transformer equals the single-device forward,
//! on ranks that are threads of this process (`ThreadComm`): U = 2 and 4 over the fixture's 4 heads,
//! T2V / I2V / no-glyph / meanflow conditioning, the fixture's 72 video tokens and an odd 45-token grid
//! (padding to U·⌈L/U⌉, cut before the attention core); every rank returns the whole output.
//!
//! Tolerance: 1e-5 relative. The ranks run the same ops on the same rows except the attention core,
//! which sees the heads in a different grouping and the keys in the same order; the text stream is
//! replicated and its attention output all-gathered over heads. Against diffusers the 1e-4 budget
//! of `parity_hv15_dit.rs` applies.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use tessera_engine::models::hv15::transformer::{self, valid_rows, Context, HunyuanVideo15Transformer3DModel};
use tessera_engine::parallel::comm::{Collective, ThreadComm};
use tessera_engine::tensor_io;

fn dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hv15/dit")
}

struct Case {
    x: Tensor,
    t: Tensor,
    t_r: Option<Tensor>,
    text: Tensor,
    glyph: Option<Tensor>,
    image: Option<Tensor>,
}

impl Case {
    fn ctx(&self) -> Context<'_> {
        Context { text: &self.text, glyph: self.glyph.as_ref(), image: self.image.as_ref() }
    }
}

fn on_ranks(u: usize, model: &Arc<HunyuanVideo15Transformer3DModel>, case: &Arc<Case>) -> Vec<Tensor> {
    let handles: Vec<_> = ThreadComm::world(u, std::time::Duration::from_secs(60))
        .into_iter()
        .map(|comm| {
            let (model, case) = (model.clone(), case.clone());
            std::thread::spawn(move || {
                let comm: &dyn Collective = &comm;
                model.forward_ulysses(&case.x, &case.t, case.t_r.as_ref(), &[case.ctx()], comm).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn ulysses_equals_single_device() {
    let dev = Device::Cpu;
    let model = Arc::new(transformer::load(&dir().join("transformer"), DType::F32, &dev).unwrap());
    let mf = Arc::new(transformer::load(&dir().join("transformer_meanflow"), DType::F32, &dev).unwrap());
    let i = tensor_io::read_all(&dir().join("inputs.safetensors"), &dev).unwrap();
    let text = valid_rows(&i["context"].get(0).unwrap(), &i["context_mask"].get(0).unwrap()).unwrap().unwrap();
    let glyph = valid_rows(&i["byt5"].get(0).unwrap(), &i["byt5_mask"].get(0).unwrap()).unwrap();
    let image = i["image_embeds"].get(0).unwrap();
    let odd = Tensor::randn(0f32, 1f32, (1, 9, 3, 3, 5), &dev).unwrap();
    let cases = [
        ("t2v", &model, i["x_t2v"].clone(), None, glyph.clone(), None),
        ("i2v", &model, i["x_i2v"].clone(), None, glyph.clone(), Some(image.clone())),
        ("no glyph, 45 tokens", &model, odd, None, None, None),
        ("meanflow", &mf, i["x_i2v"].clone(), Some(i["timestep_r"].clone()), glyph, Some(image)),
    ];
    for (name, m, x, t_r, glyph, image) in cases {
        let case = Arc::new(Case { x, t: i["timestep"].clone(), t_r, text: text.clone(), glyph, image });
        let single = m.forward(&case.x, &case.t, case.t_r.as_ref(), &[case.ctx()]).unwrap();
        for u in [2, 4] {
            for (rank, got) in on_ranks(u, m, &case).iter().enumerate() {
                assert_close(&format!("{name}: ulysses {u} rank {rank} vs single device"), got, &single, 1e-5);
            }
        }
    }
}

#[test]
fn a_degree_that_does_not_divide_the_heads_is_named() {
    let dev = Device::Cpu;
    let model = Arc::new(transformer::load(&dir().join("transformer"), DType::F32, &dev).unwrap());
    let i = tensor_io::read_all(&dir().join("inputs.safetensors"), &dev).unwrap();
    let text = valid_rows(&i["context"].get(0).unwrap(), &i["context_mask"].get(0).unwrap()).unwrap().unwrap();
    let case =
        Arc::new(Case { x: i["x_t2v"].clone(), t: i["timestep"].clone(), t_r: None, text, glyph: None, image: None });
    let handles: Vec<_> = ThreadComm::world(3, std::time::Duration::from_secs(10))
        .into_iter()
        .map(|comm| {
            let (model, case) = (model.clone(), case.clone());
            std::thread::spawn(move || {
                let comm: &dyn Collective = &comm;
                model.forward_ulysses(&case.x, &case.t, None, &[case.ctx()], comm).unwrap_err().to_string()
            })
        })
        .collect();
    let err = handles.into_iter().next().unwrap().join().unwrap();
    assert!(err.contains("ulysses degree 3 does not divide the 4 attention heads; valid degrees: [1, 2, 4]"), "{err}");
}
