//! Stored size and dtype of a model's weights, from file sizes and safetensors headers (no tensor
//! data is read).

use super::single_file;
use super::Component;

/// The stored weights of some components.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsInfo {
    /// Total bytes of the weight files.
    pub bytes: u64,
    /// The dtype holding most of the first component's bytes, e.g. "F32", "BF16" or "F8_E4M3"
    /// (+ " scaled" for ComfyUI/Kijai fp8 files with per-tensor scales).
    pub dtype: String,
}

impl WeightsInfo {
    /// `Ok(None)` when no component has weight files (configs only); an error when some do and
    /// others do not, or a header is corrupt.
    pub fn read(components: &[&Component]) -> Result<Option<Self>, String> {
        let (found, absent): (Vec<&&Component>, Vec<&&Component>) =
            components.iter().partition(|c| !c.files.is_empty());
        if found.is_empty() {
            return Ok(None);
        }
        if let Some(c) = absent.first() {
            return Err(format!("no *.safetensors weights in {} (incomplete download?)", c.path.display()));
        }
        let bytes =
            found.iter().flat_map(|c| &c.files).filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        let first = found[0];
        let table = single_file::transformer_table(first).map_err(|e| e.to_string())?;
        let mut by_dtype: std::collections::BTreeMap<&str, u64> = Default::default();
        for (_, t) in table.iter() {
            *by_dtype.entry(t.stored.name()).or_default() += t.stored_bytes();
        }
        // fp8 files keep norms, biases and embeddings in f32: name them by their fp8 matrices.
        let dtype = match by_dtype.contains_key("F8_E4M3") {
            true => "F8_E4M3".to_string(),
            false => {
                by_dtype.iter().max_by_key(|(_, b)| **b).map(|(d, _)| d.to_string()).unwrap_or_else(|| "unknown".into())
            }
        };
        let dtype = if table.fp8_scaled { format!("{dtype} scaled") } else { dtype };
        Ok(Some(Self { bytes, dtype }))
    }
}
