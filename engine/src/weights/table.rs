//! The tensor table of a checkpoint: every tensor's model name, file, stored dtype, shape and byte
//! range, read from safetensors headers only; and how stored bytes become the model's values.
//!
//! One table serves every reader (the memory-mapped `VarBuilder` and the FSDP ranged reads), so
//! key dialects and storage dtypes are handled in one place:
//!
//! - names: a `rename` function maps each file key to the name the model asks for (diffusers
//!   names); keys it maps to `None` are not model tensors (ComfyUI's `scaled_fp8` marker).
//! - dtypes: f32, f64, bf16, f16 as stored; `F8_E4M3` (e4m3fn, as ComfyUI/Kijai fp8 files hold)
//!   dequantised in f32, multiplied by the per-tensor `<module>.scale_weight` when the file has one
//!   (ComfyUI's `scaled_fp8_ops`: `weight.to(f32) * scale_weight`). Anything else (e5m2, ints in
//!   place of weights) is refused with the tensor's name.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::WeightsError;

/// How a tensor is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A dtype candle reads directly.
    Plain(DType),
    /// float8 e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities).
    F8E4M3,
}

impl Stored {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "F32" => Stored::Plain(DType::F32),
            "F16" => Stored::Plain(DType::F16),
            "BF16" => Stored::Plain(DType::BF16),
            "F64" => Stored::Plain(DType::F64),
            "U8" => Stored::Plain(DType::U8),
            "U32" => Stored::Plain(DType::U32),
            "I64" => Stored::Plain(DType::I64),
            "F8_E4M3" => Stored::F8E4M3,
            _ => return None,
        })
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Stored::Plain(d) => d.size_in_bytes(),
            Stored::F8E4M3 => 1,
        }
    }

    /// The safetensors name ("F32", "F8_E4M3", …).
    pub fn name(self) -> &'static str {
        match self {
            Stored::Plain(DType::F32) => "F32",
            Stored::Plain(DType::F16) => "F16",
            Stored::Plain(DType::BF16) => "BF16",
            Stored::Plain(DType::F64) => "F64",
            Stored::Plain(DType::U8) => "U8",
            Stored::Plain(DType::U32) => "U32",
            Stored::Plain(DType::I64) => "I64",
            Stored::Plain(_) => "other",
            Stored::F8E4M3 => "F8_E4M3",
        }
    }
}

/// One tensor of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Index into [`TensorTable::files`].
    pub file: usize,
    /// The tensor's name in the file (before renaming).
    pub key: String,
    pub stored: Stored,
    /// The dtype of the values this table hands out: the stored one, f32 for fp8 (dequantised in
    /// f32, as ComfyUI computes `fp8.float() * scale`).
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the first element in the file.
    pub offset: u64,
    /// fp8 "scaled" checkpoints: the per-tensor `scale_weight` the values are multiplied by.
    pub scale: Option<f32>,
}

impl StoredTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn stored_bytes(&self) -> u64 {
        (self.numel() * self.stored.size_in_bytes()) as u64
    }

    /// `bytes` (elements `len` of this tensor, as stored) → a 1-D CPU tensor of `self.dtype`.
    pub fn decode(&self, bytes: &[u8]) -> candle_core::Result<Tensor> {
        match self.stored {
            Stored::Plain(d) => Tensor::from_raw_buffer(bytes, d, &[bytes.len() / d.size_in_bytes()], &Device::Cpu),
            Stored::F8E4M3 => {
                let scale = self.scale.unwrap_or(1.0);
                let values: Vec<f32> = bytes.iter().map(|&b| f8_e4m3fn_to_f32(b) * scale).collect();
                Tensor::from_vec(values, bytes.len(), &Device::Cpu)
            }
        }
    }
}

/// float8 e4m3fn → f32, exactly (every e4m3fn value is an f32).
pub fn f8_e4m3fn_to_f32(bits: u8) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((bits >> 3) & 0x0f);
    let man = f32::from(bits & 0x07);
    if exp == 0x0f && bits & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // Subnormal: m/8 · 2^(1−7).
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Every tensor of a checkpoint, by model name.
#[derive(Debug, Clone)]
pub struct TensorTable {
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, StoredTensor>,
    /// The file had ComfyUI's `scaled_fp8` marker or `scale_weight` tensors.
    pub fp8_scaled: bool,
}

/// A rename function: file key → model name, `None` for keys that are not model tensors.
pub type Rename = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The file keys that carry fp8 scaling rather than weights (ComfyUI's `scaled_fp8_ops`).
fn scale_key(key: &str) -> Option<&str> {
    key.strip_suffix(".scale_weight")
}

impl TensorTable {
    /// Reads the headers of `files` and names every tensor with `rename`.
    pub fn open(files: &[PathBuf], rename: &Rename) -> Result<Self, WeightsError> {
        let mut tensors = BTreeMap::new();
        let mut scales: BTreeMap<(usize, String), f32> = BTreeMap::new();
        let mut fp8_scaled = false;
        for (i, path) in files.iter().enumerate() {
            for (key, entry) in read_header(path, i)? {
                if key == "scaled_fp8" || key.ends_with(".scaled_fp8") {
                    fp8_scaled = true;
                    continue;
                }
                if key.ends_with(".scale_input") {
                    // Only used by fp8 matmul kernels (activations); the weights do not need it.
                    continue;
                }
                if let Some(module) = scale_key(&key) {
                    fp8_scaled = true;
                    scales.insert((i, module.to_string()), read_scalar(path, &entry)?);
                    continue;
                }
                let Some(name) = rename(&key) else { continue };
                if let Some(prev) = tensors.insert(name.clone(), entry) {
                    return Err(WeightsError::Corrupt {
                        path: path.clone(),
                        msg: format!("two tensors map to {name}: {} and {key}", prev.key),
                    });
                }
            }
        }
        for t in tensors.values_mut() {
            if let Some(module) = t.key.strip_suffix(".weight") {
                t.scale = scales.get(&(t.file, module.to_string())).copied();
            }
        }
        Ok(Self { files: files.to_vec(), tensors, fp8_scaled })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// Every tensor, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &StoredTensor)> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes of the tensors as stored.
    pub fn stored_bytes(&self) -> u64 {
        self.tensors.values().map(StoredTensor::stored_bytes).sum()
    }

    /// Elements `range` of tensor `name` flattened, as a 1-D CPU tensor of its [`StoredTensor::dtype`].
    /// Only those bytes are read from the file (`pread`).
    pub fn read_range(&self, name: &str, range: std::ops::Range<usize>) -> candle_core::Result<Tensor> {
        let Some(e) = self.tensors.get(name) else { candle_core::bail!("cannot find tensor {name} in the checkpoint") };
        if range.end > e.numel() || range.start > range.end {
            candle_core::bail!("elements {range:?} out of range for tensor {name} of {} elements", e.numel());
        }
        let size = e.stored.size_in_bytes() as u64;
        let mut bytes = vec![0u8; range.len() * size as usize];
        let path = &self.files[e.file];
        let file = std::fs::File::open(path).map_err(|err| io_error(path, err))?;
        file.read_exact_at(&mut bytes, e.offset + range.start as u64 * size).map_err(|err| io_error(path, err))?;
        e.decode(&bytes)
    }
}

fn io_error(path: &Path, err: std::io::Error) -> candle_core::Error {
    candle_core::Error::msg(format!("reading {}: {err} (truncated download?)", path.display()))
}

fn read_scalar(path: &Path, e: &StoredTensor) -> Result<f32, WeightsError> {
    let corrupt = |msg: String| WeightsError::Corrupt { path: path.to_path_buf(), msg };
    if e.numel() != 1 {
        return Err(corrupt(format!("{} should be one number (fp8 scale), has shape {:?}", e.key, e.shape)));
    }
    let mut bytes = vec![0u8; e.stored.size_in_bytes()];
    let file = std::fs::File::open(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    file.read_exact_at(&mut bytes, e.offset).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    let t =
        e.decode(&bytes).and_then(|t| t.to_dtype(DType::F32)?.to_vec1::<f32>()).map_err(|x| corrupt(x.to_string()))?;
    Ok(t[0])
}

/// The JSON header of a safetensors file (`[u64 LE n][n bytes of JSON]`, then the data) and `n`.
fn header_json(path: &Path) -> Result<(serde_json::Map<String, serde_json::Value>, u64), WeightsError> {
    let corrupt = |msg: String| WeightsError::Corrupt { path: path.to_path_buf(), msg };
    let f = std::fs::File::open(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    let mut len = [0u8; 8];
    f.read_exact_at(&mut len, 0).map_err(|e| corrupt(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(corrupt(format!("safetensors header of {n} bytes is not plausible")));
    }
    let mut json = vec![0u8; n as usize];
    f.read_exact_at(&mut json, 8).map_err(|e| corrupt(e.to_string()))?;
    match serde_json::from_slice(&json).map_err(|e| corrupt(format!("bad safetensors header: {e}")))? {
        serde_json::Value::Object(map) => Ok((map, n)),
        _ => Err(corrupt("safetensors header is not a map".into())),
    }
}

fn shape_of(info: &serde_json::Value) -> Option<Vec<usize>> {
    info["shape"].as_array()?.iter().map(|v| v.as_u64().map(|v| v as usize)).collect()
}

/// Every tensor of a safetensors file, from its header.
fn read_header(path: &Path, file: usize) -> Result<Vec<(String, StoredTensor)>, WeightsError> {
    let corrupt = |msg: String| WeightsError::Corrupt { path: path.to_path_buf(), msg };
    let (map, n) = header_json(path)?;
    let mut out = Vec::with_capacity(map.len());
    for (key, info) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype_name = info["dtype"].as_str().unwrap_or("?");
        let stored = Stored::parse(dtype_name).ok_or_else(|| WeightsError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: key.clone(),
            dtype: dtype_name.to_string(),
        })?;
        let shape = shape_of(info).ok_or_else(|| corrupt(format!("tensor {key}: bad shape")))?;
        let start = info["data_offsets"][0].as_u64().ok_or_else(|| corrupt(format!("tensor {key}: bad offsets")))?;
        let dtype = match stored {
            Stored::Plain(d) => d,
            Stored::F8E4M3 => DType::F32,
        };
        let entry = StoredTensor { file, key: key.clone(), stored, dtype, shape, offset: 8 + n + start, scale: None };
        out.push((key.clone(), entry));
    }
    Ok(out)
}

/// A file's tensors as (safetensors dtype name, shape) by key, and its `__metadata__` strings
/// (headers only).
pub type HeaderKeys = BTreeMap<String, (String, Vec<usize>)>;

/// Reads [`HeaderKeys`] and the metadata of one safetensors file.
pub fn header_keys(path: &Path) -> Result<(HeaderKeys, BTreeMap<String, String>), WeightsError> {
    let (map, _) = header_json(path)?;
    let mut keys = BTreeMap::new();
    let mut meta = BTreeMap::new();
    for (key, info) in map {
        if key == "__metadata__" {
            if let Some(m) = info.as_object() {
                meta = m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
            }
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or("?").to_string();
        keys.insert(key, (dtype, shape_of(&info).unwrap_or_default()));
    }
    Ok((keys, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of float8_e4m3fn (torch.tensor(bits, dtype=uint8).view(torch.float8_e4m3fn)).
    #[test]
    fn e4m3fn_decodes_exactly() {
        let cases = [
            (0x00u8, 0.0f32),
            (0x01, 0.001953125), // smallest subnormal 2^-9
            (0x07, 0.013671875), // largest subnormal 7/8 · 2^-6
            (0x08, 0.015625),    // smallest normal 2^-6
            (0x38, 1.0),
            (0x3c, 1.5),
            (0x7e, 448.0), // largest finite
            (0xb8, -1.0),
            (0xfe, -448.0),
        ];
        for (bits, want) in cases {
            assert_eq!(f8_e4m3fn_to_f32(bits), want, "bits {bits:#04x}");
        }
        assert!(f8_e4m3fn_to_f32(0x7f).is_nan() && f8_e4m3fn_to_f32(0xff).is_nan());
    }
}
