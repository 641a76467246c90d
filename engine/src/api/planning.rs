//! Planning: the memory planner's per-rank predictions, the fit checks and plan search over GPU
//! capacities, and presets (named plans) — what `tessera plan`, the generate flags and the studio's
//! Parallel panel use. Named re-exports of [`crate::planner`]; the planner's internals (parameter
//! counts, allocation replays) stay behind it.

pub use crate::planner::predict::{PhasePrediction, PredictError, RankPrediction, Term};
pub use crate::planner::preset::{
    load as load_preset, load_dir as load_presets, parse as parse_preset, Applied, Defaults, Explicit, Preset,
    PresetError,
};
pub use crate::planner::search::{cheapest_fit, describe_changes, fits, Found, GpuSpec};
pub use crate::planner::{predict, Options, Prediction, Request, Target};
