//! What a generation asks for, and its validation against the model (sizes the model can take,
//! with errors that name the nearest valid values instead of silently rounding like diffusers).

use serde::{Deserialize, Serialize};

/// Size, schedule and guidance of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    /// CFG scale (of the high-noise expert for A14B); CFG runs when it is > 1.
    pub guidance: f64,
    /// CFG scale of the low-noise expert (A14B); defaults to `guidance`.
    pub guidance_2: Option<f64>,
    /// Overrides the scheduler's `flow_shift`/`shift`.
    pub shift: Option<f64>,
    /// Seed of the initial noise (see [`super::sampling::initial_noise`]).
    pub seed: u64,
}

/// A request the model cannot take, with the nearest valid values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    #[error("--frames {got} is not of the form 4k+1; nearest valid: {below} or {above}")]
    Frames { got: usize, below: usize, above: usize },
    #[error("--{axis} {got} is not a multiple of {multiple} for this model; nearest valid: {below} or {above}")]
    Size { axis: &'static str, got: usize, multiple: usize, below: usize, above: usize },
    #[error("--steps must be at least 1")]
    Steps,
    #[error("--guidance {0} must be a finite number ≥ 0")]
    Guidance(f64),
}

impl GenerateParams {
    /// `multiple`: VAE spatial factor × transformer patch (16 for the Wan2.1 VAE, 32 for Wan2.2).
    pub fn validate(&self, multiple: usize) -> Result<(), ParamsError> {
        if self.frames == 0 || !(self.frames - 1).is_multiple_of(4) {
            let below = if self.frames == 0 { 1 } else { (self.frames - 1) / 4 * 4 + 1 };
            return Err(ParamsError::Frames { got: self.frames, below, above: below + 4 });
        }
        for (axis, got) in [("height", self.height), ("width", self.width)] {
            if got == 0 || got % multiple != 0 {
                let below = (got / multiple * multiple).max(multiple);
                let above = got.div_ceil(multiple).max(1) * multiple;
                let above = if above == below { above + multiple } else { above };
                return Err(ParamsError::Size { axis, got, multiple, below, above });
            }
        }
        if self.steps == 0 {
            return Err(ParamsError::Steps);
        }
        for g in [Some(self.guidance), self.guidance_2].into_iter().flatten() {
            if !g.is_finite() || g < 0.0 {
                return Err(ParamsError::Guidance(g));
            }
        }
        Ok(())
    }

    /// Latent frames for the VAE's 4× temporal compression.
    pub fn latent_frames(&self) -> usize {
        (self.frames - 1) / 4 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(height: usize, width: usize, frames: usize) -> GenerateParams {
        GenerateParams { height, width, frames, steps: 4, guidance: 5.0, guidance_2: None, shift: None, seed: 0 }
    }

    #[test]
    fn errors_name_the_nearest_valid_values() {
        assert!(params(704, 1280, 121).validate(32).is_ok());
        assert_eq!(
            params(720, 1280, 121).validate(32).unwrap_err().to_string(),
            "--height 720 is not a multiple of 32 for this model; nearest valid: 704 or 736"
        );
        assert_eq!(
            params(704, 1280, 120).validate(32).unwrap_err().to_string(),
            "--frames 120 is not of the form 4k+1; nearest valid: 117 or 121"
        );
        assert!(params(720, 1280, 81).validate(16).is_ok());
        assert!(params(96, 100, 9).validate(16).unwrap_err().to_string().contains("96 or 112"));
    }
}
