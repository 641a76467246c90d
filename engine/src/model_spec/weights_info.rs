//! Stored size and dtype of a model's weights, from file sizes and safetensors headers (no tensor
//! data is read).

use std::io::Read;
use std::path::Path;

use crate::weights::Checkpoint;

/// The stored weights of some components.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsInfo {
    /// Total bytes of the weight files.
    pub bytes: u64,
    /// Stored dtype of the first component's first tensor, e.g. "F32" or "BF16".
    pub dtype: String,
}

impl WeightsInfo {
    /// `Ok(None)` when no component folder holds safetensors (configs only); an error when some do
    /// and others do not, or a file is corrupt.
    pub fn read<'a>(dirs: impl Iterator<Item = &'a Path>) -> Result<Option<Self>, String> {
        let mut found: Vec<Checkpoint> = Vec::new();
        let mut absent = Vec::new();
        for dir in dirs {
            match Checkpoint::open(dir) {
                Ok(c) => found.push(c),
                Err(crate::weights::WeightsError::NoWeights(d)) => absent.push(d),
                Err(e) => return Err(e.to_string()),
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        if let Some(d) = absent.first() {
            return Err(format!("no *.safetensors weights in {} (incomplete download?)", d.display()));
        }
        let dtype = found[0].files.first().and_then(|f| stored_dtype(f)).unwrap_or_else(|| "unknown".into());
        Ok(Some(Self { bytes: found.iter().map(Checkpoint::stored_bytes).sum(), dtype }))
    }
}

/// The dtype of the first tensor in a safetensors header (`[u64 LE length][JSON]`).
fn stored_dtype(file: &Path) -> Option<String> {
    let mut f = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len).min(100 << 20) as usize;
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    json.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .find_map(|(_, v)| v.get("dtype")?.as_str().map(str::to_string))
}
