//! Shared helpers for the engine's integration tests: fixture paths and error metrics.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use tessera_engine::parallel::comm::{Collective, ThreadComm};

pub mod recording;
pub mod sweep;

/// `tests/fixtures/golden/<rel>` at the workspace root (copied from shared/golden).
pub fn golden(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden").join(rel)
}

/// (max |a−b|, ‖a−b‖/‖b‖) over all elements, computed in f64.
pub fn errors(got: &Tensor, want: &Tensor) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let a = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut max = 0f64;
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        max = max.max((x - y).abs());
        num += (x - y).powi(2);
        den += y.powi(2);
    }
    (max, (num / den.max(1e-30)).sqrt())
}

/// Prints and checks the relative error against `tol`.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let (max, rel) = errors(got, want);
    println!("{name}: max_abs {max:.3e}  rel {rel:.3e}  (tolerance rel {tol:.0e})");
    assert!(rel <= tol, "{name}: relative error {rel:.3e} above {tol:.0e} (max abs {max:.3e})");
}

/// Runs `f` on every rank of a `world`-rank thread collective (one thread per rank, as the worker
/// processes run the same code over sockets) and returns each rank's result, rank order.
pub fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(Arc<dyn Collective>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = ThreadComm::world(world, std::time::Duration::from_secs(60))
        .into_iter()
        .map(|c| {
            let f = f.clone();
            std::thread::spawn(move || f(Arc::new(c)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}
