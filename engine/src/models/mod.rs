//! The networks. One folder per model family; each part is a plain struct built from a `VarBuilder`.

pub mod hv15;
pub mod umt5;
pub mod wan;
