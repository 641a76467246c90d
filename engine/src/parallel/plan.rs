//! The parallel plan of one generation: how many ranks, and how the denoise, the text encoder and
//! the VAE are spread over them. One definition shared by the CLI flags, presets, the planner and the
//! worker jobs, so that what the planner predicts is what runs.
//!
//! Rank layout (every rank computes a distinct part of the denoise, `ulysses × cfg_parallel = ranks`):
//! - rank `r` is in CFG group `r / ulysses` (0: conditional branch, 1: unconditional) and at position
//!   `r % ulysses` of that group's Ulysses (sequence-parallel) group;
//! - FSDP groups are `fsdp` consecutive ranks (`[k·fsdp, (k+1)·fsdp)`), each holding `1/fsdp` of every
//!   transformer block's weights;
//! - the VAE runs on ranks `0..vae_parallel` (rank 0 assembles the video); the others idle.

use serde::{Deserialize, Serialize};

use super::Rank;
use crate::fields::Field;

/// How the VAE work is split over `vae_parallel` ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VaeMode {
    /// Whole tiles of the diffusers tile plan, balanced by area; identical to single-device tiled decode.
    Tiles,
    /// Row slabs of every feature map with halo exchange at each conv; identical to untiled decode.
    #[default]
    Halo,
}

impl std::fmt::Display for VaeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tiles => "tiles",
            Self::Halo => "halo",
        })
    }
}

/// Where the prompt's text encoder runs (Wan: UMT5; HunyuanVideo 1.5: Qwen2.5-VL, its ByT5 glyph
/// encoder staying on the host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TextEncoderPlacement {
    /// On the host (supervisor side), freed before denoising starts.
    #[default]
    #[value(alias = "host")]
    Cpu,
    /// Split by layer over the worker ranks (`text::sharded`, `text::hv15_sharded`): each holds ~1/N
    /// of the layers.
    #[value(alias = "workers")]
    Sharded,
}

impl std::fmt::Display for TextEncoderPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Sharded => "sharded",
        })
    }
}

/// Which transformer experts a rank keeps loaded during the denoise (two-expert models, A14B).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// Both experts loaded at `load` and kept for the whole run (no reload at the boundary).
    #[default]
    Pipeline,
    /// Only the running expert: at the boundary step each rank frees the high-noise expert and
    /// reads its part of the low-noise one from the checkpoint (one expert's shard less at the peak).
    Phased,
}

impl std::fmt::Display for Residency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pipeline => "pipeline",
            Self::Phased => "phased",
        })
    }
}

/// Tile settings in sample pixels, as diffusers' `enable_tiling(h, w, stride_h, stride_w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TilingSpec {
    pub tile_height: usize,
    pub tile_width: usize,
    pub stride_height: usize,
    pub stride_width: usize,
}

impl TilingSpec {
    /// Parses `TH,TW,SH,SW` (the CLI's `--tiling`).
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        let parts: Vec<usize> =
            s.split(',').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| {
                PlanError::Tiling(format!("`{s}` is not TH,TW,SH,SW (four integers, e.g. 256,256,192,192)"))
            })?;
        let [tile_height, tile_width, stride_height, stride_width] = parts[..] else {
            return Err(PlanError::Tiling(format!("`{s}` has {} values; expected TH,TW,SH,SW", parts.len())));
        };
        let t = Self { tile_height, tile_width, stride_height, stride_width };
        t.validate()?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), PlanError> {
        if self.stride_height == 0 || self.stride_width == 0 {
            return Err(PlanError::Tiling("strides must be > 0".into()));
        }
        if self.stride_height > self.tile_height || self.stride_width > self.tile_width {
            return Err(PlanError::Tiling(format!(
                "stride {}x{} exceeds tile {}x{}: tiles would leave gaps",
                self.stride_height, self.stride_width, self.tile_height, self.tile_width
            )));
        }
        Ok(())
    }

    pub fn as_array(&self) -> [usize; 4] {
        [self.tile_height, self.tile_width, self.stride_height, self.stride_width]
    }
}

impl Default for TilingSpec {
    /// diffusers' defaults: 256-px tiles every 192 px.
    fn default() -> Self {
        Self { tile_height: 256, tile_width: 256, stride_height: 192, stride_width: 192 }
    }
}

/// A parallel plan. `Default` is one rank doing everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelPlan {
    /// Worker processes (one per GPU, or CPU virtual devices).
    pub ranks: usize,
    /// Ulysses sequence-parallel degree (tokens split, all-to-all to heads around attention).
    pub ulysses: usize,
    /// 2: conditional and unconditional branches on two halves of the world; 1: both on every rank.
    pub cfg_parallel: usize,
    /// Ranks sharing one copy of the transformer weights (1 = every rank holds full weights).
    pub fsdp: usize,
    /// Ranks that decode/encode with the VAE (`≤ ranks`).
    pub vae_parallel: usize,
    pub vae_mode: VaeMode,
    /// Tiled VAE (tiles mode needs it; halo mode forbids it).
    pub vae_tiling: Option<TilingSpec>,
    pub text_encoder: TextEncoderPlacement,
    /// Experts resident during the denoise (only two-expert models have a choice).
    pub residency: Residency,
}

impl Default for ParallelPlan {
    fn default() -> Self {
        Self {
            ranks: 1,
            ulysses: 1,
            cfg_parallel: 1,
            fsdp: 1,
            vae_parallel: 1,
            vae_mode: VaeMode::Halo,
            vae_tiling: None,
            text_encoder: TextEncoderPlacement::Cpu,
            residency: Residency::Pipeline,
        }
    }
}

/// What the model and request imply for plan validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanModel {
    /// Attention heads of the transformer (Ulysses splits them).
    pub num_heads: usize,
    /// Whether the request runs classifier-free guidance (two branches per step).
    pub cfg: bool,
}

/// A plan that cannot run. Messages are [`crate::fields`] templates (`«ulysses»` etc.): render them
/// for the CLI or the studio with [`crate::fields::render`]; each names a valid alternative.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("«ranks» must be at least 1")]
    NoRanks,
    #[error("«ulysses» {ulysses} × «cfg-parallel» {cfg} = {product} ≠ «ranks» {ranks}: every rank computes a distinct part of the denoise; {hint}")]
    Layout { ulysses: usize, cfg: usize, product: usize, ranks: usize, hint: String },
    #[error("«cfg-parallel» must be 1 or 2 (two guidance branches), got {0}")]
    CfgDegree(usize),
    #[error("«cfg-parallel» 2 needs classifier-free guidance («guidance» > 1); use «ulysses» {ranks} «cfg-parallel» 1 instead")]
    CfgWithoutGuidance { ranks: usize },
    #[error("«fsdp» {fsdp} does not divide «ranks» {ranks}; valid: {valid:?}")]
    Fsdp { fsdp: usize, ranks: usize, valid: Vec<usize> },
    #[error("«vae-parallel» {vae} must be between 1 and «ranks» {ranks}")]
    VaeParallel { vae: usize, ranks: usize },
    #[error("«ulysses» {ulysses} does not divide the model's {heads} attention heads; valid degrees up to «ranks»: {valid:?}")]
    Heads { ulysses: usize, heads: usize, valid: Vec<usize> },
    #[error("«vae-mode» halo decodes untiled feature slabs; drop «tiling» (or use «vae-mode» tiles)")]
    HaloWithTiling,
    #[error("«tiling» {0}")]
    Tiling(String),
}

impl PlanError {
    /// The field the user should change first.
    pub fn field(&self) -> Field {
        match self {
            Self::NoRanks => Field::Ranks,
            Self::Layout { .. } | Self::Heads { .. } => Field::Ulysses,
            Self::CfgDegree(_) | Self::CfgWithoutGuidance { .. } => Field::CfgParallel,
            Self::Fsdp { .. } => Field::Fsdp,
            Self::VaeParallel { .. } => Field::VaeParallel,
            Self::HaloWithTiling => Field::VaeMode,
            Self::Tiling(_) => Field::Tiling,
        }
    }
}

impl ParallelPlan {
    /// One rank doing everything.
    pub fn single() -> Self {
        Self::default()
    }

    /// Checks the plan's arithmetic against the model; errors propose a valid plan.
    pub fn validate(&self, model: PlanModel) -> Result<(), PlanError> {
        let n = self.ranks;
        if n == 0 {
            return Err(PlanError::NoRanks);
        }
        if !(1..=2).contains(&self.cfg_parallel) {
            return Err(PlanError::CfgDegree(self.cfg_parallel));
        }
        if self.cfg_parallel == 2 && !model.cfg {
            return Err(PlanError::CfgWithoutGuidance { ranks: n });
        }
        if self.ulysses == 0 || self.ulysses * self.cfg_parallel != n {
            let hint = if model.cfg && n.is_multiple_of(2) {
                format!("try «ulysses» {} «cfg-parallel» 2, or «ulysses» {n} «cfg-parallel» 1", n / 2)
            } else {
                format!("try «ulysses» {n} «cfg-parallel» 1")
            };
            return Err(PlanError::Layout {
                ulysses: self.ulysses,
                cfg: self.cfg_parallel,
                product: self.ulysses * self.cfg_parallel,
                ranks: n,
                hint,
            });
        }
        if model.num_heads == 0 || !model.num_heads.is_multiple_of(self.ulysses) {
            let valid = (1..=n).filter(|d| model.num_heads.is_multiple_of(*d)).collect();
            return Err(PlanError::Heads { ulysses: self.ulysses, heads: model.num_heads, valid });
        }
        if self.fsdp == 0 || !n.is_multiple_of(self.fsdp) {
            let valid = (1..=n).filter(|d| n.is_multiple_of(*d)).collect();
            return Err(PlanError::Fsdp { fsdp: self.fsdp, ranks: n, valid });
        }
        if self.vae_parallel == 0 || self.vae_parallel > n {
            return Err(PlanError::VaeParallel { vae: self.vae_parallel, ranks: n });
        }
        match (self.vae_mode, self.vae_tiling) {
            (VaeMode::Halo, Some(_)) => return Err(PlanError::HaloWithTiling),
            (_, Some(t)) => t.validate()?,
            _ => {}
        }
        Ok(())
    }

    /// The CFG branch rank `r` computes (0 = conditional) when `cfg_parallel` is 2; 0 otherwise.
    pub fn cfg_index(&self, r: Rank) -> usize {
        r.0 / self.ulysses.max(1)
    }

    /// Ranks of `r`'s Ulysses group, in sequence order.
    pub fn ulysses_group(&self, r: Rank) -> Vec<Rank> {
        let u = self.ulysses.max(1);
        let base = r.0 / u * u;
        (base..base + u).map(Rank).collect()
    }

    /// Ranks of `r`'s FSDP group (consecutive ranks sharing one copy of the weights).
    pub fn fsdp_group(&self, r: Rank) -> Vec<Rank> {
        let f = self.fsdp.max(1);
        let base = r.0 / f * f;
        (base..base + f).map(Rank).collect()
    }

    /// Ranks that take part in the VAE decode/encode.
    pub fn vae_group(&self) -> Vec<Rank> {
        (0..self.vae_parallel.max(1)).map(Rank).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN: PlanModel = PlanModel { num_heads: 40, cfg: true };

    fn plan(ranks: usize, ulysses: usize, cfg_parallel: usize, fsdp: usize) -> ParallelPlan {
        ParallelPlan { ranks, ulysses, cfg_parallel, fsdp, vae_parallel: ranks, ..Default::default() }
    }

    #[test]
    fn valid_layouts_pass() {
        for p in [plan(1, 1, 1, 1), plan(2, 2, 1, 2), plan(2, 1, 2, 1), plan(8, 4, 2, 8), plan(4, 2, 2, 4)] {
            p.validate(WAN).unwrap();
        }
    }

    #[test]
    fn errors_propose_a_valid_plan() {
        let e = plan(8, 2, 2, 1).validate(WAN).unwrap_err().to_string();
        assert!(e.contains("try «ulysses» 4 «cfg-parallel» 2"), "{e}");
        let e = plan(3, 3, 1, 1).validate(WAN).unwrap_err().to_string();
        assert!(e.contains("[1, 2]"), "{e}");
        let e = plan(4, 4, 1, 3).validate(WAN).unwrap_err().to_string();
        assert!(e.contains("valid: [1, 2, 4]"), "{e}");
        let mut p = plan(2, 2, 1, 1);
        p.vae_parallel = 3;
        assert!(p.validate(WAN).unwrap_err().to_string().contains("between 1 and «ranks» 2"));
        p.vae_parallel = 2;
        p.vae_tiling = Some(TilingSpec::default());
        assert_eq!(p.validate(WAN).unwrap_err(), PlanError::HaloWithTiling);
        p.vae_mode = VaeMode::Tiles;
        p.validate(WAN).unwrap();
        let e = plan(2, 1, 2, 1).validate(PlanModel { num_heads: 40, cfg: false }).unwrap_err();
        assert_eq!(e, PlanError::CfgWithoutGuidance { ranks: 2 });
    }

    #[test]
    fn groups_follow_the_documented_layout() {
        let p = plan(8, 4, 2, 2);
        assert_eq!(p.cfg_index(Rank(5)), 1);
        assert_eq!(p.ulysses_group(Rank(5)), (4..8).map(Rank).collect::<Vec<_>>());
        assert_eq!(p.fsdp_group(Rank(5)), vec![Rank(4), Rank(5)]);
        assert_eq!(p.vae_group().len(), 8);
    }

    #[test]
    fn tiling_parses_and_rejects_gaps() {
        assert_eq!(TilingSpec::parse("256,256,192,192").unwrap(), TilingSpec::default());
        assert!(TilingSpec::parse("256,256").is_err());
        assert!(TilingSpec::parse("128,128,192,192").unwrap_err().to_string().contains("gaps"));
    }

    #[test]
    fn presets_deserialize_with_defaults_and_reject_unknown_keys() {
        let p: ParallelPlan = serde_json::from_str(r#"{"ranks": 2, "ulysses": 2, "vae_mode": "tiles"}"#).unwrap();
        assert_eq!((p.ranks, p.ulysses, p.fsdp, p.vae_mode), (2, 2, 1, VaeMode::Tiles));
        assert!(serde_json::from_str::<ParallelPlan>(r#"{"rank": 2}"#).is_err());
    }
}
