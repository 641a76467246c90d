//! [`Video`]: the decoded frames of a generation, as they came back from rank 0, and how to save
//! them (every write atomic: a temporary name, then a rename).

use std::path::Path;

use candle_core::Tensor;

use super::settings::Settings;
use crate::media::{self, Frames, MediaError, OutputKind};
use crate::tensor_io;

/// `(1, F, 3, H, W)` f32 in [0, 1] (diffusers' `output_type="pt"`), its frame rate and the
/// settings that made it.
#[derive(Clone, Debug)]
pub struct Video {
    pub frames: Tensor,
    pub fps: f64,
    /// Written into every MP4 and PNG saved from it ([`Settings::to_json`]).
    pub settings: Option<Settings>,
}

impl Video {
    /// Frame count, height and width.
    pub fn dims(&self) -> (usize, usize, usize) {
        let d = self.frames.dims();
        (d[1], d[3], d[4])
    }

    /// The frames as RGB8 images (rounded like torchvision's `(x * 255).round()`).
    pub fn rgb8(&self) -> Result<Frames, MediaError> {
        Frames::from_tensor(&self.frames)
    }

    /// Writes the video to `path`; the kind follows the name: `.mp4` (H.264), `.safetensors`
    /// (tensor `video`, f32, exact) or a folder `dir/` (PNG frames). MP4 and PNG carry the
    /// settings in their metadata.
    pub fn save(&self, path: &Path) -> Result<(), MediaError> {
        let kind = OutputKind::of(path).map_err(|msg| MediaError::Encode { path: path.to_path_buf(), msg })?;
        let json = self.settings.as_ref().map(|s| Settings { fps: Some(self.fps), ..s.clone() }.to_json());
        match kind {
            OutputKind::Safetensors => tensor_io::write_atomic(path, &[("video", self.frames.clone())])?,
            OutputKind::Mp4 => media::write_mp4(path, &self.rgb8()?, self.fps, json.as_deref())?,
            OutputKind::PngFrames => media::write_png_frames(path, &self.rgb8()?, json.as_deref())?,
        }
        Ok(())
    }
}
