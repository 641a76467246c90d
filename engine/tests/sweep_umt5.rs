//! The UMT5 encoder on every configuration of the sweep (`tests/fixtures/sweep/umt5`: 4–64
//! relative-position buckets with max distances 8–256 and sequences longer than them, 1–5 heads,
//! `d_kv·heads ≠ d_model`, 1–3 layers, gated-gelu and gated-silu, padding masks, batch 2, a
//! single token) against transformers' `UMT5EncoderModel.last_hidden_state`.
//!
//! Tolerance: 1e-5 relative. f32 on both sides with the same bf16-rounded weights; only summation
//! order differs (measured 1e-7..1e-6); a wrong bucket or mask moves the states by 1e-2 or more.

mod common;

use candle_core::{DType, Device};
use common::sweep::{self, Report};
use tessera_engine::models::umt5::{Config, UMT5EncoderModel};
use tessera_engine::weights::{self, Checkpoint};

#[test]
fn every_umt5_config_matches_transformers() {
    let cases = sweep::cases("umt5");
    let mut report = Report::default();
    for case in &cases {
        let dir = case.dir.join("text_encoder");
        let model = weights::load_config::<Config>(&dir).map_err(|e| e.to_string()).and_then(|cfg| {
            let vb = Checkpoint::open(&dir).and_then(|c| c.var_builder(DType::F32, &Device::Cpu));
            vb.map_err(|e| e.to_string()).and_then(|vb| UMT5EncoderModel::new(&cfg, vb).map_err(|e| e.to_string()))
        });
        let model = match model {
            Ok(m) => m,
            Err(e) => {
                report.error(&case.name, e);
                continue;
            }
        };
        let ids = case.input("input_ids").to_dtype(DType::U32).expect("ids");
        match model.forward(&ids, Some(case.input("attention_mask"))) {
            Ok(hidden) => {
                report.check(&format!("{} hidden", case.name), &hidden, case.output("hidden"), 1e-5);
            }
            Err(e) => report.error(&case.name, e),
        }
    }
    report.finish("umt5", cases.len());
}
