//! GPU capacities, the fit check, and the search for the cheapest plan that fits.
//!
//! "Cheapest" = fewest GPUs first, then the smallest change from the plan asked for, each change
//! priced by what it costs at run time: a CPU text encoder or a parallel (halo) VAE is nearly free,
//! more FSDP adds one all-gather per block, another Ulysses/CFG layout changes the communication,
//! tiling changes the decode (blend seams, diffusers-compatible but not identical to untiled).

use serde::{Deserialize, Serialize};

use super::dispatch::predict;
use super::model::ModelSpec;
use super::predict::{Options, PredictError, Prediction, Request};
use crate::parallel::plan::{ParallelPlan, PlanModel, Residency, TextEncoderPlacement, TilingSpec, VaeMode};

/// `N` GPUs of `bytes` each (`--gpus 8x24GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSpec {
    pub count: usize,
    pub bytes: u64,
}

/// Share of a GPU a plan may use: the rest absorbs allocator fragmentation and the planner's
/// calibration error (README, "Memory planner").
pub const USABLE_FRACTION: f64 = 0.9;

impl GpuSpec {
    /// Parses `NxSIZE`: `8x24GB`, `1x80GB`, `2x24GiB`, `4x24564MiB`. GB and GiB both mean 2³⁰
    /// bytes, as GPU memory is quoted (a "24 GB" RTX 4090 has 24 GiB).
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("--gpus `{s}`: expected COUNTxSIZE such as 8x24GB, 1x80GB or 4x24564MiB");
        let (n, size) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
        let count: usize = n.trim().parse().map_err(|_| err())?;
        let size = size.trim();
        let split = size.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(size.len());
        let (num, unit) = size.split_at(split);
        let num: f64 = num.parse().map_err(|_| err())?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "gb" | "gib" | "g" => (1u64 << 30) as f64,
            "mb" | "mib" | "m" => (1u64 << 20) as f64,
            "tb" | "tib" => (1u64 << 40) as f64,
            _ => return Err(err()),
        };
        if count == 0 || num <= 0.0 {
            return Err(err());
        }
        Ok(Self { count, bytes: (num * scale) as u64 })
    }

    /// Bytes a rank may plan to use.
    pub fn usable(&self) -> u64 {
        (self.bytes as f64 * USABLE_FRACTION) as u64
    }
}

impl std::fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}GB", self.count, self.bytes as f64 / (1u64 << 30) as f64)
    }
}

/// Whether every rank fits a GPU (and there are enough GPUs).
pub fn fits(prediction: &Prediction, gpu: &GpuSpec) -> bool {
    prediction.ranks.len() <= gpu.count && prediction.ranks.iter().all(|r| r.peak_bytes <= gpu.usable())
}

/// The price of moving from `base` to `cand` (see the module docs).
pub fn change_cost(base: &ParallelPlan, cand: &ParallelPlan) -> u32 {
    let mut c = 0;
    c += 20 * cand.ranks.saturating_sub(base.ranks) as u32;
    if cand.fsdp != base.fsdp {
        c += 2 * (cand.fsdp.max(base.fsdp) / cand.fsdp.min(base.fsdp).max(1)).ilog2().max(1);
    }
    if (cand.ulysses, cand.cfg_parallel) != (base.ulysses, base.cfg_parallel) {
        c += 2;
    }
    if cand.text_encoder != base.text_encoder {
        c += 1;
    }
    if cand.vae_parallel != base.vae_parallel {
        c += 1;
    }
    // Phased residency reads the low-noise expert again every run (the session cannot keep both).
    if cand.residency != base.residency {
        c += 1;
    }
    if cand.vae_mode != base.vae_mode {
        c += 1;
    }
    if cand.vae_tiling != base.vae_tiling {
        c += 3;
    }
    c
}

/// Every valid plan on `ranks` ranks for this model and request.
pub fn candidates(spec: &ModelSpec, req: &Request, ranks: usize) -> Vec<ParallelPlan> {
    let model = PlanModel { num_heads: spec.transformer.num_attention_heads, cfg: req.guidance > 1.0 };
    let mut out = Vec::new();
    let divisors: Vec<usize> = (1..=ranks).filter(|d| ranks.is_multiple_of(*d)).collect();
    let vae_groups: Vec<usize> = if ranks > 1 { vec![1, ranks] } else { vec![1] };
    // Only two-expert models have a residency to choose.
    let residencies: &[Residency] =
        if spec.transformer_2.is_some() { &[Residency::Pipeline, Residency::Phased] } else { &[Residency::Pipeline] };
    for cfg_parallel in [1, 2] {
        if !ranks.is_multiple_of(cfg_parallel) {
            continue;
        }
        for &fsdp in &divisors {
            for &vae_parallel in &vae_groups {
                for (vae_mode, vae_tiling) in [(VaeMode::Halo, None), (VaeMode::Tiles, Some(TilingSpec::default()))] {
                    for text_encoder in [TextEncoderPlacement::Cpu, TextEncoderPlacement::Sharded] {
                        for &residency in residencies {
                            let p = ParallelPlan {
                                ranks,
                                ulysses: ranks / cfg_parallel,
                                cfg_parallel,
                                fsdp,
                                vae_parallel,
                                vae_mode,
                                vae_tiling,
                                text_encoder,
                                residency,
                            };
                            if p.validate(model).is_ok() {
                                out.push(p);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A plan that fits, its prediction and its price.
#[derive(Debug, Clone)]
pub struct Found {
    pub plan: ParallelPlan,
    pub prediction: Prediction,
    pub cost: u32,
}

/// The cheapest plan on at most `gpu.count` ranks (at least the plan's own) that fits every rank,
/// or `None` when nothing does.
pub fn cheapest_fit(
    spec: &ModelSpec,
    req: &Request,
    base: &ParallelPlan,
    opts: &Options,
    gpu: &GpuSpec,
) -> Result<Option<Found>, PredictError> {
    let mut best: Option<Found> = None;
    for ranks in base.ranks.min(gpu.count)..=gpu.count {
        for plan in candidates(spec, req, ranks) {
            let cost = change_cost(base, &plan);
            if best.as_ref().is_some_and(|b| b.cost < cost) {
                continue;
            }
            let prediction = predict(spec, req, &plan, opts)?;
            if !fits(&prediction, gpu) {
                continue;
            }
            let better = match &best {
                None => true,
                Some(b) => cost < b.cost || (cost == b.cost && prediction.max_peak() < b.prediction.max_peak()),
            };
            if better {
                best = Some(Found { plan, prediction, cost });
            }
        }
    }
    Ok(best)
}

/// The changes from `base` to `plan`, as CLI flags.
pub fn describe_changes(base: &ParallelPlan, plan: &ParallelPlan) -> Vec<String> {
    let mut v = Vec::new();
    if plan.ranks != base.ranks {
        v.push(format!("--ranks {}", plan.ranks));
    }
    if plan.ulysses != base.ulysses {
        v.push(format!("--ulysses {}", plan.ulysses));
    }
    if plan.cfg_parallel != base.cfg_parallel {
        v.push(format!("--cfg-parallel {}", plan.cfg_parallel));
    }
    if plan.fsdp != base.fsdp {
        v.push(format!("--fsdp {}", plan.fsdp));
    }
    if plan.vae_parallel != base.vae_parallel {
        v.push(format!("--vae-parallel {}", plan.vae_parallel));
    }
    if plan.vae_mode != base.vae_mode {
        v.push(format!("--vae-mode {}", plan.vae_mode));
    }
    if plan.vae_tiling != base.vae_tiling {
        match plan.vae_tiling {
            Some(t) => {
                let [a, b, c, d] = t.as_array();
                v.push(format!("--tiling {a},{b},{c},{d}"));
            }
            None => v.push("(no --tiling)".into()),
        }
    }
    if plan.text_encoder != base.text_encoder {
        v.push(format!("--text-encoder-on {}", plan.text_encoder));
    }
    if plan.residency != base.residency {
        v.push(format!("--residency {}", plan.residency));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::predict::Target;
    use std::path::PathBuf;

    fn spec(name: &str) -> ModelSpec {
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/configs")).join(name);
        ModelSpec::from_path(&root).unwrap()
    }

    #[test]
    fn gpu_specs_parse() {
        assert_eq!(GpuSpec::parse("8x24GB").unwrap(), GpuSpec { count: 8, bytes: 24 << 30 });
        assert_eq!(GpuSpec::parse("1X80gib").unwrap().bytes, 80 << 30);
        assert_eq!(GpuSpec::parse("4x24564MiB").unwrap().bytes, 24564 << 20);
        for bad in ["8", "x24GB", "8x24", "0x24GB", "8x24PB"] {
            assert!(GpuSpec::parse(bad).unwrap_err().contains("COUNTxSIZE"), "{bad}");
        }
    }

    #[test]
    fn costs_prefer_cheap_changes() {
        let base = ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 1, ..Default::default() };
        let text = ParallelPlan { text_encoder: TextEncoderPlacement::Sharded, ..base };
        let fsdp = ParallelPlan { fsdp: 2, ..base };
        let tiles = ParallelPlan { vae_mode: VaeMode::Tiles, vae_tiling: Some(TilingSpec::default()), ..base };
        let more = ParallelPlan { ranks: 4, ulysses: 4, ..base };
        assert_eq!(change_cost(&base, &base), 0);
        assert!(change_cost(&base, &text) < change_cost(&base, &fsdp));
        assert!(change_cost(&base, &fsdp) < change_cost(&base, &tiles));
        assert!(change_cost(&base, &tiles) < change_cost(&base, &more));
    }

    #[test]
    fn candidates_are_valid_and_cover_fsdp() {
        let s = spec("wan2.2-ti2v-5b");
        let req = Request { height: 704, width: 1280, frames: 121, guidance: 5.0, image: false };
        let c = candidates(&s, &req, 4);
        assert!(c.iter().any(|p| p.fsdp == 4 && p.cfg_parallel == 2));
        // 24 heads: Ulysses 4 and 2 both divide.
        assert!(c.iter().all(|p| p.ulysses * p.cfg_parallel == 4));
    }

    #[test]
    fn search_finds_a_plan_that_fits_a14b_on_8_gpus() {
        let s = spec("wan2.2-t2v-a14b");
        let req = Request { height: 720, width: 1280, frames: 81, guidance: 4.0, image: false };
        let opts = Options::new(Target::Cuda);
        let gpu = GpuSpec::parse("8x24GB").unwrap();
        let base = ParallelPlan { ranks: 8, ulysses: 8, vae_parallel: 8, ..Default::default() };
        assert!(!fits(&predict(&s, &req, &base, &opts).unwrap(), &gpu), "no FSDP: 57 GB of experts per GPU");
        let found = cheapest_fit(&s, &req, &base, &opts, &gpu).unwrap().expect("a plan fits 8×24 GB");
        // One bf16 expert is 28.6 GB: FSDP 2 fits only with phased residency (one expert loaded).
        assert!(
            found.plan.fsdp >= 4 || (found.plan.fsdp == 2 && found.plan.residency == Residency::Phased),
            "{:?}",
            found.plan
        );
        assert!(fits(&found.prediction, &gpu));
        assert!(describe_changes(&base, &found.plan).iter().any(|c| c.starts_with("--fsdp")));
        // Nothing fits a single 24 GB GPU.
        let one = GpuSpec::parse("1x24GB").unwrap();
        assert!(cheapest_fit(&s, &req, &ParallelPlan::single(), &opts, &one).unwrap().is_none());
    }
}
