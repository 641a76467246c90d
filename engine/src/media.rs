//! Saving generated video: H.264 MP4 (OpenH264, bundled and compiled from source, muxed by
//! `muxide`; no system libraries), PNG frame folders, or the raw safetensors tensor. Every file is
//! written to a temporary name and renamed, so a failed save never leaves a partial file.
//!
//! Generation settings travel inside the files as text ([`read_metadata`] reads them back): in a
//! PNG as a `tEXt` chunk with keyword [`PNG_KEYWORD`], in an MP4 as the iTunes-style comment item
//! (`moov/udta/meta/ilst/©cmt`, what ffmpeg writes for `-metadata comment=…` and ffprobe shows as
//! the `comment` tag).

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::tensor_io::{write_file_atomic, TensorIoError};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("video tensor must be (F, 3, H, W) or (1, F, 3, H, W) in [0, 1], got {0:?}")]
    Shape(Vec<usize>),
    #[error("H.264 needs an even width and height, got {0}x{1}")]
    OddSize(usize, usize),
    #[error("encoding MP4 {path}: {msg}")]
    Encode { path: PathBuf, msg: String },
    #[error("reading {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error(transparent)]
    Io(#[from] TensorIoError),
}

/// Frames as RGB8 images: `(F, 3, H, W)` (or with a leading batch of 1) in [0, 1].
pub struct Frames {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<Vec<u8>>,
}

impl Frames {
    pub fn from_tensor(video: &Tensor) -> Result<Self, MediaError> {
        let shape = video.dims().to_vec();
        let video = match shape[..] {
            [1, _, 3, _, _] => video.squeeze(0),
            [_, 3, _, _] => Ok(video.clone()),
            _ => return Err(MediaError::Shape(shape)),
        }
        .map_err(|_| MediaError::Shape(shape.clone()))?;
        let (f, _c, h, w) = video.dims4().map_err(|_| MediaError::Shape(shape.clone()))?;
        // (f, 3, h, w) -> (f, h, w, 3), rounded like torchvision/diffusers' `(x * 255).round()`.
        let data = video
            .to_dtype(DType::F32)
            .and_then(|v| v.permute((0, 2, 3, 1))?.contiguous()?.flatten_all()?.to_vec1::<f32>())
            .map_err(|_| MediaError::Shape(shape.clone()))?;
        let frame = h * w * 3;
        let rgb = (0..f)
            .map(|i| {
                data[i * frame..(i + 1) * frame].iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
            })
            .collect();
        Ok(Self { width: w, height: h, rgb })
    }
}

/// The `tEXt` keyword of the settings in a PNG.
pub const PNG_KEYWORD: &str = "tessera";

/// Writes an H.264 MP4 at `fps`, with `comment` (the generation settings) in its metadata.
pub fn write_mp4(path: &Path, frames: &Frames, fps: f64, comment: Option<&str>) -> Result<(), MediaError> {
    let (w, h) = (frames.width, frames.height);
    if w % 2 != 0 || h % 2 != 0 {
        return Err(MediaError::OddSize(w, h));
    }
    let err = |msg: String| MediaError::Encode { path: path.to_path_buf(), msg };
    // OpenH264 fails a frame whose bitstream outgrows its internal buffer (`cmMallocMemeError`,
    // "Native:3"), which near-incompressible frames (noise, e.g. from random weights) do at low
    // quantisers even at 256×192. Encode with the full quantiser range first; only when that fails,
    // again with a floor on the quantiser, so ordinary video keeps its quality.
    let mut last = String::new();
    let mut encoded = None;
    for min_qp in [0u8, 30, 38, 46] {
        match encode_h264(frames, fps, min_qp) {
            Ok(nals) => {
                if min_qp > 0 {
                    tracing::warn!(
                        "{}: H.264 needed a quantiser floor of {min_qp} (very noisy frames)",
                        path.display()
                    );
                }
                encoded = Some(nals);
                break;
            }
            Err(e) => last = e,
        }
    }
    let nals = encoded.ok_or_else(|| err(last))?;
    Ok(write_file_atomic(path, |tmp| {
        let mut bytes = Vec::new();
        let mut builder = muxide::api::MuxerBuilder::new(&mut bytes)
            .video(muxide::api::VideoCodec::H264, w as u32, h as u32, fps)
            .with_fast_start(true);
        if let Some(text) = comment {
            builder = builder.with_metadata(muxide::api::Metadata::new().with_title(text));
        }
        let mut muxer = builder.build().map_err(|e| e.to_string())?;
        for (i, (nal, key)) in nals.iter().enumerate() {
            muxer.write_video(i as f64 / fps, nal, *key).map_err(|e| e.to_string())?;
        }
        muxer.finish().map_err(|e| e.to_string())?;
        if let Some(text) = comment {
            title_to_comment(&mut bytes, text)?;
        }
        std::fs::write(tmp, &bytes).map_err(|e| e.to_string())
    })?)
}

/// muxide writes one metadata string, the title (`©nam`), in the iTunes item list. The settings
/// are a comment, not a title players should show, and `©cmt` has the same layout
/// (`[size]©nam[size]data[type 1 = UTF-8][locale 0][text]`): rename the item(s) holding exactly
/// `text`, found by their whole size and content so nothing else can match.
fn title_to_comment(bytes: &mut [u8], text: &str) -> Result<(), String> {
    let item_len = 8 + 16 + text.len();
    let mut renamed = 0;
    let mut i = 4;
    while i + 4 <= bytes.len() {
        let is_item = &bytes[i..i + 4] == b"\xa9nam"
            && be_u32(&bytes[i - 4..i]) as usize == item_len
            && bytes.get(i + 8..i + 12) == Some(b"data".as_slice())
            && bytes.get(i + 20..i + 20 + text.len()) == Some(text.as_bytes());
        if is_item {
            bytes[i..i + 4].copy_from_slice(b"\xa9cmt");
            renamed += 1;
            i += item_len;
        } else {
            i += 1;
        }
    }
    if renamed == 0 {
        return Err("the muxer wrote no metadata item for the settings".into());
    }
    Ok(())
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes one RGB8 PNG atomically, with `text` in a `tEXt` chunk keyed [`PNG_KEYWORD`] when given
/// (`tEXt` is Latin-1: pass ASCII, e.g. JSON with non-ASCII escaped).
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8], text: Option<&str>) -> Result<(), MediaError> {
    write_file_atomic(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| e.to_string())?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if let Some(text) = text {
            encoder.add_text_chunk(PNG_KEYWORD.into(), text.into()).map_err(|e| e.to_string())?;
        }
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// The settings text a Tessera PNG or MP4 carries (`None`: a file of that kind without them).
pub fn read_metadata(path: &Path) -> Result<Option<String>, MediaError> {
    let err = |msg: String| MediaError::Read { path: path.to_path_buf(), msg };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.starts_with(b"\x89PNG") {
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let reader = decoder.read_info().map_err(|e| err(e.to_string()))?;
        let info = reader.info();
        let text = info.uncompressed_latin1_text.iter().find(|t| t.keyword == PNG_KEYWORD).map(|t| t.text.clone());
        return Ok(text);
    }
    if bytes.get(4..8) == Some(b"ftyp".as_slice()) {
        let path_of = [b"moov", b"udta", b"meta", b"ilst", b"\xa9cmt", b"data"];
        return Ok(find_box(&bytes, &path_of).map(|data| {
            // `data`: type (4) and locale (4), then the text.
            String::from_utf8_lossy(data.get(8..).unwrap_or_default()).into_owned()
        }));
    }
    Err(err("not a PNG or an MP4 file".into()))
}

/// The payload of the first box at `path` (ISO BMFF: `[u32 size][type]`; `meta` is a full box
/// with 4 bytes of version and flags before its children).
fn find_box<'a>(mut data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    for (depth, want) in path.iter().enumerate() {
        let mut found = None;
        let mut rest = data;
        while rest.len() >= 8 {
            let size = be_u32(&rest[..4]) as usize;
            if size < 8 || size > rest.len() {
                break;
            }
            if &rest[4..8] == *want {
                found = Some(&rest[8..size]);
                break;
            }
            rest = &rest[size..];
        }
        data = found?;
        if **want == *b"meta" && depth + 1 < path.len() {
            data = data.get(4..)?;
        }
    }
    Some(data)
}

/// The frames as H.264 NAL units (and whether each is a key frame), quantisers limited to
/// `min_qp..=51`.
fn encode_h264(frames: &Frames, fps: f64, min_qp: u8) -> Result<Vec<(Vec<u8>, bool)>, String> {
    use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, FrameType, QpRange, RateControlMode};
    use openh264::formats::{RgbSliceU8, YUVBuffer};
    use openh264::OpenH264API;

    let (w, h) = (frames.width, frames.height);
    // About 0.2 bits per pixel per frame: visually clean for generated video at modest size.
    let bps = ((w * h) as f64 * fps * 0.2).clamp(500_000.0, 50_000_000.0) as u32;
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(bps))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        // Every frame must be coded: with frame skipping on, rate control drops frames of noisy
        // (generated) video as empty bitstreams, which the muxer rejects. Buffer-based control
        // is the mode OpenH264 accepts without skipping (the others warn on stderr).
        .rate_control_mode(RateControlMode::Bufferbased)
        .skip_frames(false)
        .qp(QpRange::new(min_qp, 51));
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| e.to_string())?;
    let mut nals = Vec::with_capacity(frames.rgb.len());
    for rgb in &frames.rgb {
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(rgb, (w, h)));
        let bits = encoder.encode(&yuv).map_err(|e| e.to_string())?;
        let key = matches!(bits.frame_type(), FrameType::IDR | FrameType::I);
        nals.push((bits.to_vec(), key));
    }
    Ok(nals)
}

/// Writes `frame_00000.png`, … into `dir` (created), each with `text` (the settings) in a `tEXt`
/// chunk. Each file is written atomically.
pub fn write_png_frames(dir: &Path, frames: &Frames, text: Option<&str>) -> Result<(), MediaError> {
    std::fs::create_dir_all(dir).map_err(|e| TensorIoError::Write { path: dir.to_path_buf(), msg: e.to_string() })?;
    for (i, rgb) in frames.rgb.iter().enumerate() {
        write_png(&dir.join(format!("frame_{i:05}.png")), frames.width, frames.height, rgb, text)?;
    }
    Ok(())
}

/// Where `--out` sends the video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    Safetensors,
    Mp4,
    PngFrames,
}

impl OutputKind {
    /// `x.safetensors`, `x.mp4`, or a folder (existing, or a path ending in `/`).
    pub fn of(path: &Path) -> Result<Self, String> {
        let text = path.to_string_lossy();
        if text.ends_with('/') || path.is_dir() {
            return Ok(Self::PngFrames);
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("safetensors") => Ok(Self::Safetensors),
            Some("mp4") => Ok(Self::Mp4),
            _ => Err(format!(
                "--out {text}: use a .safetensors file (the video tensor), a .mp4 file, or a folder ending in / (PNG frames)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn mp4_and_png_are_written() {
        let dir = std::env::temp_dir().join(format!("tessera-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let video = Tensor::rand(0f32, 1.0, (5, 3, 32, 48), &Device::Cpu).unwrap();
        let frames = Frames::from_tensor(&video).unwrap();
        write_mp4(&dir.join("v.mp4"), &frames, 16.0, None).unwrap();
        let bytes = std::fs::read(dir.join("v.mp4")).unwrap();
        assert!(bytes.len() > 100 && bytes.windows(4).any(|w| w == b"ftyp"));
        write_png_frames(&dir.join("frames"), &frames, None).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("frames")).unwrap().count(), 5);
        assert_eq!(OutputKind::of(Path::new("a/b.MP4")).unwrap(), OutputKind::Mp4);
        assert!(OutputKind::of(Path::new("a/b.gif")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn settings_text_round_trips_through_png_and_mp4() {
        let dir = tempfile::tempdir().unwrap();
        let video = Tensor::rand(0f32, 1.0, (3, 3, 32, 48), &Device::Cpu).unwrap();
        let frames = Frames::from_tensor(&video).unwrap();
        let text = r#"{"prompt":"a fox \u00e9","seed":7}"#;
        write_mp4(&dir.path().join("v.mp4"), &frames, 16.0, Some(text)).unwrap();
        assert_eq!(read_metadata(&dir.path().join("v.mp4")).unwrap().as_deref(), Some(text));
        write_png_frames(&dir.path().join("f"), &frames, Some(text)).unwrap();
        assert_eq!(read_metadata(&dir.path().join("f/frame_00002.png")).unwrap().as_deref(), Some(text));
        write_mp4(&dir.path().join("plain.mp4"), &frames, 16.0, None).unwrap();
        assert_eq!(read_metadata(&dir.path().join("plain.mp4")).unwrap(), None);
        std::fs::write(dir.path().join("x.txt"), "hello").unwrap();
        assert!(read_metadata(&dir.path().join("x.txt")).unwrap_err().to_string().contains("not a PNG or an MP4"));
    }

    /// Pure noise at 256×192 overflows OpenH264's frame buffer at low quantisers (the encoder then
    /// fails with "Native:3"); the quantiser floor fallback still writes every frame.
    #[test]
    fn incompressible_frames_still_encode() {
        let dir = tempfile::tempdir().unwrap();
        let video = Tensor::rand(0f32, 1.0, (9, 3, 192, 256), &Device::Cpu).unwrap();
        let frames = Frames::from_tensor(&video).unwrap();
        assert!(
            encode_h264(&frames, 24.0, 0).is_err(),
            "the full quantiser range fails on noise (else drop the fallback)"
        );
        write_mp4(&dir.path().join("noise.mp4"), &frames, 24.0, None).unwrap();
        let bytes = std::fs::read(dir.path().join("noise.mp4")).unwrap();
        assert!(bytes.windows(4).any(|w| w == b"ftyp"));
    }
}
