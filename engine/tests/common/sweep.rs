//! The configuration sweep (`tests/fixtures/sweep/`, written by `scripts/gen_sweep.py`): dozens of
//! tiny random configurations per model part, each with its config, inputs and diffusers'
//! outputs. [`cases`] lists a part's cases from `index.json` (a listed case that is missing fails
//! the test, nothing is skipped); [`Report`] runs every case and fails once, naming all that erred.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tessera_engine::tensor_io;

use super::errors;

/// `tests/fixtures/sweep` at the workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sweep")
}

/// One configuration: its folder, `case.json`, inputs and reference outputs (f32, CPU).
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub desc: serde_json::Value,
    pub inputs: HashMap<String, Tensor>,
    pub outputs: HashMap<String, Tensor>,
}

impl Case {
    pub fn input(&self, name: &str) -> &Tensor {
        self.inputs.get(name).unwrap_or_else(|| panic!("{}: no input `{name}`", self.name))
    }

    pub fn output(&self, name: &str) -> &Tensor {
        self.outputs.get(name).unwrap_or_else(|| panic!("{}: no output `{name}`", self.name))
    }
}

fn read_map(path: &Path) -> HashMap<String, Tensor> {
    if path.is_file() {
        tensor_io::read_all(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    } else {
        HashMap::new()
    }
}

/// Every case of `part` ("transformer", "vae", "umt5", "scheduler") that `index.json` lists.
pub fn cases(part: &str) -> Vec<Case> {
    let index_path = root().join("index.json");
    let text = std::fs::read_to_string(&index_path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/gen_sweep.py)", index_path.display()));
    let index: serde_json::Value = serde_json::from_str(&text).expect("index.json parses");
    let names = index[part].as_array().unwrap_or_else(|| panic!("index.json lists no `{part}` cases"));
    assert!(!names.is_empty(), "index.json lists no `{part}` cases");
    names
        .iter()
        .map(|n| {
            let name = n.as_str().expect("case names are strings").to_string();
            let dir = root().join(part).join(&name);
            let desc_path = dir.join("case.json");
            let desc = std::fs::read_to_string(&desc_path).unwrap_or_else(|e| panic!("{}: {e}", desc_path.display()));
            Case {
                desc: serde_json::from_str(&desc).expect("case.json parses"),
                inputs: read_map(&dir.join("inputs.safetensors")),
                outputs: read_map(&dir.join("outputs.safetensors")),
                name,
                dir,
            }
        })
        .collect()
}

/// Collects the comparisons of a sweep: prints each, fails at the end listing every one above its
/// tolerance, so one run shows all the configurations that disagree.
#[derive(Default)]
pub struct Report {
    checked: usize,
    failures: Vec<String>,
}

impl Report {
    /// Compares `got` with `want` on the relative error ‖got−want‖/‖want‖ (computed in f64).
    pub fn check(&mut self, what: &str, got: &Tensor, want: &Tensor, tol: f64) {
        self.compare(what, got, want, tol, false)
    }

    /// Compares `got` with `want` on the largest absolute difference.
    pub fn check_abs(&mut self, what: &str, got: &Tensor, want: &Tensor, tol: f64) {
        self.compare(what, got, want, tol, true)
    }

    fn compare(&mut self, what: &str, got: &Tensor, want: &Tensor, tol: f64, absolute: bool) {
        self.checked += 1;
        if got.dims() != want.dims() {
            let msg = format!("{what}: shape {:?}, expected {:?}", got.dims(), want.dims());
            println!("{msg}");
            self.failures.push(msg);
            return;
        }
        let (max, rel) = errors(got, want);
        let (measure, value) = if absolute { ("max-abs", max) } else { ("rel", rel) };
        let verdict = if value <= tol { "ok" } else { "FAIL" };
        println!("{what}: max-abs {max:.3e}  rel {rel:.3e}  (tolerance {measure} {tol:.0e}) {verdict}");
        if value > tol {
            self.failures.push(format!("{what}: {measure} {value:.3e} > {tol:.0e} (max-abs {max:.3e}, rel {rel:.3e})"));
        }
    }

    /// Records an error that stopped a case.
    pub fn error(&mut self, what: &str, err: impl std::fmt::Display) {
        self.checked += 1;
        let msg = format!("{what}: error: {err}");
        println!("{msg}");
        self.failures.push(msg);
    }

    /// Panics listing every failure; `expected` is the least number of comparisons the sweep must
    /// have made (a guard against a loop that silently ran nothing).
    pub fn finish(self, part: &str, expected: usize) {
        println!("{part} sweep: {} comparisons, {} failed", self.checked, self.failures.len());
        assert!(self.checked >= expected, "{part} sweep made {} comparisons, expected {expected}", self.checked);
        assert!(self.failures.is_empty(), "{part} sweep failures:\n  {}", self.failures.join("\n  "));
    }
}
