//! What the planner knows about a model: the engine's one model reader, [`crate::model_spec`]
//! (configs only are needed, so a plan can be made for a checkpoint that is not downloaded yet).

pub use crate::model_spec::{ModelSpec, ModelSpecError};
