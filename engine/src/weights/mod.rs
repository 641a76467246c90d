//! Checkpoint discovery and loading: the only place that turns weight files on disk into a
//! `VarBuilder` (candle C7). Model code never sees a path.
//!
//! A diffusers component folder (`vae/`, `transformer/`, `text_encoder/`) holds a `config.json` and
//! either one `*.safetensors` file or several shards listed by `*.safetensors.index.json`; a single
//! file (ComfyUI / Wan-native) is a [`ComponentWeights`] with a rename from its key dialect. Files are
//! memory-mapped; each tensor is converted to the run dtype only when the model asks for it, so an
//! fp32 checkpoint never sits in memory whole next to its converted copy.
//!
//! - [`table`]: the tensor table (names after renaming, stored dtypes incl. fp8 and its scales).
//! - [`delta`]: weight deltas (LoRA) merged into tensors as they are read, whole or by slice.

// Memory-mapping a file (`Mmap::map`) and dropping its pages (`unchecked_advise_range`) are `unsafe`
// in memmap2: both are only sound under assumptions about the file and the mapping that the compiler
// cannot check, argued at each block below.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

pub mod delta;
pub mod table;

pub use delta::{Delta, Deltas};
pub use table::{Rename, Stored, StoredTensor, TensorTable};

/// Errors from finding, validating and opening a checkpoint folder.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("no `{component}/` folder and no config.json with weights in {path}: point --model at a diffusers pipeline folder or at its `{component}/` folder")]
    ComponentNotFound { component: String, path: PathBuf },
    #[error("missing config.json in {0}")]
    MissingConfig(PathBuf),
    #[error("cannot parse {path}: {source}")]
    BadConfig { path: PathBuf, source: serde_json::Error },
    #[error("no *.safetensors weights in {0} (only safetensors checkpoints are supported)")]
    NoWeights(PathBuf),
    #[error("bad safetensors index {path}: {msg}")]
    BadIndex { path: PathBuf, msg: String },
    #[error("weights file {path} is unreadable or corrupt (truncated download?): {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("tensor {tensor} in {} is stored as {dtype}, which Tessera does not read (it reads F32, BF16, F16 and F8_E4M3 with or without scale_weight): use the fp8_e4m3fn, bf16 or fp16 release of the file", .path.display())]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A located component folder: its config file and its safetensors files.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Resolves `root` to the folder of `component`: `root` itself when it holds a `config.json`
/// next to safetensors weights, else `root/component`.
pub fn component_dir(root: &Path, component: &str) -> Result<PathBuf, WeightsError> {
    let sub = root.join(component);
    if sub.join("config.json").is_file() {
        return Ok(sub);
    }
    if root.join("config.json").is_file() && !root.join("model_index.json").is_file() {
        return Ok(root.to_path_buf());
    }
    Err(WeightsError::ComponentNotFound { component: component.to_string(), path: root.to_path_buf() })
}

/// Reads and parses `dir/config.json`.
pub fn load_config<T: DeserializeOwned>(dir: &Path) -> Result<T, WeightsError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => WeightsError::MissingConfig(dir.to_path_buf()),
        _ => WeightsError::Io { path: path.clone(), source: e },
    })?;
    serde_json::from_str(&text).map_err(|source| WeightsError::BadConfig { path, source })
}

impl Checkpoint {
    /// Finds the weights of a component folder: the shards named by an index file if there is
    /// one, else every `*.safetensors` file in the folder.
    pub fn open(dir: &Path) -> Result<Self, WeightsError> {
        let entries = std::fs::read_dir(dir).map_err(|source| WeightsError::Io { path: dir.to_path_buf(), source })?;
        let mut names: Vec<String> =
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let files = if let Some(index) = names.iter().find(|n| n.ends_with(".safetensors.index.json")) {
            shards_from_index(&dir.join(index))?
        } else {
            names.iter().filter(|n| n.ends_with(".safetensors")).map(|n| dir.join(n)).collect()
        };
        if files.is_empty() {
            return Err(WeightsError::NoWeights(dir.to_path_buf()));
        }
        for f in &files {
            validate_safetensors(f)?;
        }
        Ok(Self { dir: dir.to_path_buf(), files })
    }

    /// A memory-mapped `VarBuilder` that converts every tensor to `dtype` on `device` when asked.
    ///
    /// Each tensor is copied out of the mapping and its pages are then released from this process
    /// (`MADV_DONTNEED` on a read-only file map), so loading peaks at the converted weights plus one
    /// tensor — never at the whole file mapped *and* copied.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, WeightsError> {
        ComponentWeights::diffusers(self.files.clone()).var_builder(dtype, device)
    }

    /// Total bytes of the weight files (as stored).
    pub fn stored_bytes(&self) -> u64 {
        self.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
    }
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let text =
        std::fs::read_to_string(index).map_err(|source| WeightsError::Io { path: index.to_path_buf(), source })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| WeightsError::BadIndex { path: index.to_path_buf(), msg: e.to_string() })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| WeightsError::BadIndex { path: index.to_path_buf(), msg: "no `weight_map` object".into() })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        if !f.is_file() {
            return Err(WeightsError::BadIndex {
                path: index.to_path_buf(),
                msg: format!("shard {} listed in the index is missing", f.display()),
            });
        }
    }
    Ok(files)
}

/// One component's weights as the loaders read them: its files, how their keys map to the names
/// the model asks for, and the deltas (LoRAs) to merge in.
#[derive(Clone)]
pub struct ComponentWeights {
    pub files: Vec<PathBuf>,
    rename: Arc<Rename>,
    pub deltas: Arc<Deltas>,
}

impl std::fmt::Debug for ComponentWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentWeights").field("files", &self.files).field("deltas", &self.deltas.len()).finish()
    }
}

impl ComponentWeights {
    /// Files whose keys already are the model's names (diffusers).
    pub fn diffusers(files: Vec<PathBuf>) -> Self {
        Self::renamed(files, Arc::new(|k: &str| Some(k.to_string())))
    }

    /// Files in another key dialect, translated by `rename`.
    pub fn renamed(files: Vec<PathBuf>, rename: Arc<Rename>) -> Self {
        Self { files, rename, deltas: Arc::new(Deltas::default()) }
    }

    pub fn with_deltas(mut self, deltas: Deltas) -> Self {
        self.deltas = Arc::new(deltas);
        self
    }

    /// The tensor table (headers only).
    pub fn table(&self) -> Result<TensorTable, WeightsError> {
        for f in &self.files {
            validate_safetensors(f)?;
        }
        TensorTable::open(&self.files, self.rename.as_ref())
    }

    /// A memory-mapped `VarBuilder` that converts every tensor to `dtype` on `device` when asked
    /// (see [`Checkpoint::var_builder`]), with the deltas merged in.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, WeightsError> {
        let backend = MmapBackend::open(self.table()?, self.deltas.clone())?;
        Ok(VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))
    }
}

/// Memory-mapped safetensors files serving tensors by model name (see [`Checkpoint::var_builder`]).
struct MmapBackend {
    table: TensorTable,
    maps: Vec<memmap2::Mmap>,
    deltas: Arc<Deltas>,
}

impl MmapBackend {
    fn open(table: TensorTable, deltas: Arc<Deltas>) -> Result<Self, WeightsError> {
        let mut maps = Vec::with_capacity(table.files().len());
        for path in table.files() {
            let file = std::fs::File::open(path).map_err(|source| WeightsError::Io { path: path.clone(), source })?;
            // SAFETY: mapped read-only and never written through. Like every mmap user (candle's
            // `from_mmaped_safetensors` included) we rely on the file not being truncated or modified
            // while the process runs: a checkpoint is read-only input, and every tensor's range is
            // bounds-checked against the map before it is read (`load`).
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|source| WeightsError::Io { path: path.clone(), source })?;
            maps.push(map);
        }
        Ok(Self { table, maps, deltas })
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(loc) = self.table.get(name) else { candle_core::bail!("cannot find tensor {name} in the checkpoint") };
        let map = &self.maps[loc.file];
        let (start, len) = (loc.offset as usize, loc.stored_bytes() as usize);
        let bytes = map.get(start..start + len).ok_or_else(|| {
            candle_core::Error::msg(format!(
                "tensor {name} lies beyond the end of {}",
                self.table.files()[loc.file].display()
            ))
        })?;
        let tensor = loc.decode(bytes)?.reshape(loc.shape.as_slice())?;
        // SAFETY: the range is inside the map (`map.get` above succeeded on it) and `bytes`, this
        // call's borrow of it, is dead (`decode` copied it). `Mmap::map` is a read-only shared file
        // mapping, so `MADV_DONTNEED` only drops clean page-cache pages: later reads (other tensors
        // on the same pages included) fault the same bytes in again from the file, under the
        // unchanged-file assumption of `open`. The advice is best-effort (it only returns memory
        // early), so its error is ignored.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
        self.deltas.apply(name, tensor)?.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for MmapBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.table.get(name).is_some()
    }
}

/// Checks the safetensors header and that the file is as long as the header says, so a truncated
/// download is reported by name before any mmap read can fault.
pub fn validate_safetensors(path: &Path) -> Result<(), WeightsError> {
    use std::io::Read;
    let corrupt = |msg: String| WeightsError::Corrupt { path: path.to_path_buf(), msg };
    let mut f = std::fs::File::open(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    let file_len = f.metadata().map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|_| corrupt(format!("file is only {file_len} bytes")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(corrupt(format!("header claims {header_len} bytes but the file has {file_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| corrupt(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&header).map_err(|e| corrupt(format!("bad header: {e}")))?;
    let mut data_end = 0u64;
    if let Some(obj) = value.as_object() {
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            let end = info.get("data_offsets").and_then(|o| o.get(1)).and_then(|v| v.as_u64()).unwrap_or(0);
            data_end = data_end.max(end);
        }
    }
    let needed = 8 + header_len + data_end;
    if needed > file_len {
        return Err(corrupt(format!("truncated: tensors need {needed} bytes but the file has {file_len}")));
    }
    Ok(())
}

/// A `VarBuilder` backend that hands out zeros and records every (name, shape) the model asks
/// for. Used to check a module tree against a real checkpoint's manifest without its weights, and
/// by `make-model` to learn which tensors a random checkpoint must contain.
#[derive(Debug, Clone, Default)]
pub struct RecordingBackend {
    requested: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl RecordingBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder over this recorder. Zeros are allocated lazily per request; use tiny configs or
    /// `Device::Cpu` with real configs only when memory allows (see `meta_shapes`).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every tensor requested so far, name → shape.
    pub fn requested(&self) -> BTreeMap<String, Vec<usize>> {
        self.requested.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl SimpleBackend for RecordingBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Ok(mut m) = self.requested.lock() {
            m.insert(name.to_string(), s.dims().to_vec());
        }
        // A zero-strided broadcast: no memory is allocated however large the real tensor is.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recording backend cannot serve `{name}` without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Reads a real checkpoint manifest (`shared/golden/manifests/*.json` format): its `config` and
/// `tensors` (name → shape).
pub fn read_manifest(path: &Path) -> Result<(serde_json::Value, BTreeMap<String, Vec<usize>>), WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| WeightsError::BadConfig { path: path.to_path_buf(), source })?;
    let config = value.get("config").cloned().unwrap_or(serde_json::Value::Null);
    let mut tensors = BTreeMap::new();
    if let Some(obj) = value.get("tensors").and_then(|t| t.as_object()) {
        for (name, shape) in obj {
            let dims = shape
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect())
                .unwrap_or_default();
            tensors.insert(name.clone(), dims);
        }
    }
    Ok((config, tensors))
}
