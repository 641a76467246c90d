//! Named-tensor files for the CLI and tests: read safetensors inputs with errors that name the file
//! and the tensor, and write outputs atomically (temp file in the same folder + rename), so a
//! failed run never leaves a partial output behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    #[error("cannot read {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("{path} has no tensor `{name}` (it holds: {available})")]
    Missing { path: PathBuf, name: String, available: String },
    #[error("cannot write {path}: {msg}")]
    Write { path: PathBuf, msg: String },
}

/// All tensors of a safetensors file, loaded on `device` in their stored dtype.
pub fn read_all(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, TensorIoError> {
    if !path.is_file() {
        return Err(TensorIoError::Read { path: path.to_path_buf(), msg: "no such file".into() });
    }
    crate::weights::validate_safetensors(path)
        .map_err(|e| TensorIoError::Read { path: path.to_path_buf(), msg: e.to_string() })?;
    candle_core::safetensors::load(path, device)
        .map_err(|e| TensorIoError::Read { path: path.to_path_buf(), msg: e.to_string() })
}

/// One named tensor of a file, converted to `dtype`.
pub fn read_tensor(path: &Path, name: &str, dtype: DType, device: &Device) -> Result<Tensor, TensorIoError> {
    let mut all = read_all(path, device)?;
    take(&mut all, path, name)?
        .to_dtype(dtype)
        .map_err(|e| TensorIoError::Read { path: path.to_path_buf(), msg: e.to_string() })
}

/// Removes `name` from a loaded map, or names what the file does hold.
pub fn take(all: &mut HashMap<String, Tensor>, path: &Path, name: &str) -> Result<Tensor, TensorIoError> {
    all.remove(name).ok_or_else(|| {
        let mut names: Vec<&String> = all.keys().collect();
        names.sort();
        let available = names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        TensorIoError::Missing { path: path.to_path_buf(), name: name.to_string(), available }
    })
}

/// Writes `tensors` to `path` as safetensors, atomically.
pub fn write_atomic(path: &Path, tensors: &[(&str, Tensor)]) -> Result<(), TensorIoError> {
    let err = |msg: String| TensorIoError::Write { path: path.to_path_buf(), msg };
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((n.to_string(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| err(e.to_string()))?;
    write_file_atomic(path, |tmp| candle_core::safetensors::save(&map, tmp).map_err(|e| e.to_string()))
}

/// Runs `write` on a temporary path next to `path`, then renames it over `path`. On any error the
/// temporary file is removed and `path` is untouched.
pub fn write_file_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), TensorIoError> {
    let err = |msg: String| TensorIoError::Write { path: path.to_path_buf(), msg };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(err(format!("folder {} does not exist", dir.display())));
    }
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(msg) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(msg));
    }
    Ok(())
}
