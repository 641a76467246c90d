//! The planner's front door: a model's family picks its terms (Wan: [`super::predict`], whose
//! phase and term types both families share; HunyuanVideo 1.5: [`super::hv15`]).

use super::model::ModelSpec;
use super::predict::{Options, PredictError, Prediction, Request};
use crate::parallel::plan::ParallelPlan;

/// Every rank's predicted peak per phase of `plan` for `req` on `spec`.
pub fn predict(
    spec: &ModelSpec,
    req: &Request,
    plan: &ParallelPlan,
    opts: &Options,
) -> Result<Prediction, PredictError> {
    if spec.hv15.is_some() {
        super::hv15::predict(spec, req, plan, opts)
    } else {
        super::predict::predict_wan(spec, req, plan, opts)
    }
}
