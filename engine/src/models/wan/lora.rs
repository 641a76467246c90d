//! LoRAs for the Wan transformer: a LoRA file in any of the dialects creators use, parsed into
//! weight deltas on the diffusers-named tensors (`weights::Deltas`), merged when the weights are
//! read (whole, or each FSDP rank its slice).
//!
//! Dialects (reference: diffusers 0.42.1 `loaders/lora_conversion_utils.py`,
//! `_convert_non_diffusers_wan_lora_to_diffusers` and `_convert_musubi_wan_lora_to_diffusers`, and
//! `shared/golden/lora/case.json`, which records what diffusers did with every key):
//! - lightx2v / Kijai: `diffusion_model.` + Wan-native module + `.lora_down.weight` /
//!   `.lora_up.weight` (or `.lora_A` / `.lora_B`) + `.alpha`; full deltas `.diff` (weight) and
//!   `.diff_b` (bias); `blocks.N.diff_m` (modulation);
//! - diffusers / PEFT: `transformer.` + diffusers module + `.lora_A.weight` / `.lora_B.weight`, alpha
//!   from the safetensors metadata `lora_adapter_metadata` (`lora_alpha / r`);
//! - Kohya / musubi-tuner: `lora_unet_` + the Wan-native module with `_` for `.`.
//!
//! Scaling (as diffusers + PEFT compute it): `W += strength · alpha / rank · up @ down` (scale 1
//! without an alpha); `b += strength · diff_b` and `W += strength · diff` (alpha does not apply).
//!
//! Where diffusers drops keys, Tessera applies them, as ComfyUI does: the `diff` of norms
//! (`norm3`, `norm_q`, `norm_k`), `diff_m` (the block's modulation table) and a `diff` on a linear
//! weight. In the published lightx2v LoRAs and the golden files they are zeros, so the outputs
//! equal diffusers'; a non-zero one changes the model as its author meant. Keys that match no
//! tensor of the model are an error, never ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::checkpoint_keys::{native_transformer_modules, transformer_native_to_diffusers};
use crate::weights::{ComponentWeights, Delta, Deltas, TensorTable, WeightsError};

/// How many unmatched keys an error lists.
const LIST: usize = 4;

/// Why a LoRA cannot be merged; each message names the file and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read LoRA {}: {msg}", .path.display())]
    Read { path: PathBuf, msg: String },
    #[error("LoRA {} has no LoRA tensors (lora_down/lora_up, lora_A/lora_B, diff, diff_b): is it a LoRA?", .path.display())]
    Empty { path: PathBuf },
    #[error("LoRA {}: {count} of its keys match nothing in the Wan transformer ({target}), e.g. {first}: is it a LoRA for this model?", .path.display())]
    Unmatched { path: PathBuf, target: String, count: usize, first: String },
    #[error("LoRA {}: {module} has lora_down of rank {down} but lora_up of rank {up}: the file is inconsistent", .path.display())]
    Rank { path: PathBuf, module: String, down: usize, up: usize },
    #[error("LoRA {} was made for another architecture: {tensor} is {model:?} in the model but the LoRA changes a {lora:?} weight (e.g. a 14B LoRA on the 5B, or Wan2.1 on Wan2.2)", .path.display())]
    Architecture { path: PathBuf, tensor: String, model: Vec<usize>, lora: Vec<usize> },
}

/// One thing a LoRA changes.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// `W += s · up @ down` on `tensor` (a `.weight`).
    LowRank { down: String, up: String, rank: usize, alpha: Option<f64> },
    /// `T += s · diff` on `tensor` (a weight, bias, norm or modulation table).
    Full { key: String },
}

/// A LoRA file checked against a model: what each of its tensors changes.
#[derive(Debug, Clone)]
pub struct LoraPlan {
    path: PathBuf,
    /// Model tensor (diffusers name) → changes.
    changes: Vec<(String, Change)>,
}

/// The suffixes a LoRA key ends with, and what they hold.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Down,
    Up,
    Alpha,
    Diff,
    DiffBias,
    DiffModulation,
}

fn split_part(key: &str) -> Option<(&str, Part)> {
    const PARTS: [(&str, Part); 8] = [
        (".lora_down.weight", Part::Down),
        (".lora_A.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".lora_B.weight", Part::Up),
        (".alpha", Part::Alpha),
        (".diff_b", Part::DiffBias),
        (".diff_m", Part::DiffModulation),
        (".diff", Part::Diff),
    ];
    PARTS.iter().find_map(|(s, p)| key.strip_suffix(s).map(|m| (m, *p)))
}

/// A key's module in diffusers names (`blocks.0.attn1.to_q`), from any dialect.
fn diffusers_module(module: &str, native: bool, kohya: &BTreeMap<String, String>) -> Option<String> {
    if let Some(rest) = module.strip_prefix("lora_unet_") {
        let native = kohya.get(rest)?;
        return Some(
            transformer_native_to_diffusers(&format!("{native}.weight")).trim_end_matches(".weight").to_string(),
        );
    }
    let module = ["model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model."]
        .iter()
        .find_map(|p| module.strip_prefix(p))
        .unwrap_or(module);
    if native {
        // Append a `.` so the table's `.q.`-style patterns see the module's last part.
        let name = transformer_native_to_diffusers(&format!("{module}.weight"));
        Some(name.trim_end_matches(".weight").to_string())
    } else {
        Some(module.to_string())
    }
}

/// Whether a LoRA file names Wan-native modules (lightx2v, Kijai) rather than diffusers ones (PEFT).
fn is_native(keys: &BTreeMap<String, (String, Vec<usize>)>) -> bool {
    keys.keys().any(|k| {
        k.starts_with("diffusion_model.")
            || k.starts_with("model.diffusion_model.")
            || [".self_attn.", ".cross_attn.", ".ffn.0.", ".ffn.2.", "head.head."].iter().any(|m| k.contains(m))
    })
}

/// PEFT's `lora_alpha / r` from `__metadata__["lora_adapter_metadata"]` (diffusers'
/// `save_lora_weights` writes it), as the alpha of every module; `None` without metadata.
fn peft_alpha(meta: &BTreeMap<String, String>) -> Option<f64> {
    let json: serde_json::Value = serde_json::from_str(meta.get("lora_adapter_metadata")?).ok()?;
    let obj = json.as_object()?;
    let find = |suffix: &str| obj.iter().find(|(k, _)| k.ends_with(suffix)).and_then(|(_, v)| v.as_f64());
    find("lora_alpha")
}

impl LoraPlan {
    /// Reads the header of the LoRA at `path` and checks every key against `model` (the
    /// transformer's tensors by diffusers name) of `num_layers` blocks.
    pub fn check(path: &Path, model: &TensorTable, num_layers: usize) -> Result<Self, LoraError> {
        let read = |e: WeightsError| LoraError::Read { path: path.to_path_buf(), msg: e.to_string() };
        crate::weights::validate_safetensors(path).map_err(read)?;
        let (keys, meta) = crate::weights::table::header_keys(path).map_err(read)?;
        let lora = ComponentWeights::diffusers(vec![path.to_path_buf()]).table().map_err(read)?;
        let native = is_native(&keys);
        let kohya: BTreeMap<String, String> =
            native_transformer_modules(num_layers).into_iter().map(|m| (m.replace('.', "_"), m)).collect();
        let metadata_alpha = peft_alpha(&meta);

        // Group the keys by module.
        let mut modules: BTreeMap<String, BTreeMap<u8, (String, Vec<usize>)>> = BTreeMap::new();
        let mut unmatched = Vec::new();
        for (key, (_, shape)) in &keys {
            let Some((module, part)) = split_part(key) else {
                unmatched.push(key.clone());
                continue;
            };
            let Some(module) = diffusers_module(module, native, &kohya) else {
                unmatched.push(key.clone());
                continue;
            };
            modules.entry(module).or_default().insert(part as u8, (key.clone(), shape.clone()));
        }
        let mut changes = Vec::new();
        for (module, parts) in &modules {
            let known =
                ["weight", "bias", "scale_shift_table"].iter().any(|p| model.get(&format!("{module}.{p}")).is_some());
            if !known {
                unmatched.extend(parts.values().map(|(k, _)| k.clone()));
                continue;
            }
            let get = |p: Part| parts.get(&(p as u8));
            let mut target = |tensor: String, change: Change, lora_shape: &[usize]| -> Result<(), LoraError> {
                let Some(entry) = model.get(&tensor) else {
                    unmatched.push(parts.values().next().map(|(k, _)| k.clone()).unwrap_or_default());
                    return Ok(());
                };
                let fits = match &change {
                    Change::Full { .. } => lora_shape.iter().product::<usize>() == entry.numel(),
                    Change::LowRank { .. } => {
                        // lora_shape = [out, cols]
                        entry.shape.first() == lora_shape.first() && entry.numel() == lora_shape[0] * lora_shape[1]
                    }
                };
                if !fits {
                    return Err(LoraError::Architecture {
                        path: path.to_path_buf(),
                        tensor,
                        model: entry.shape.clone(),
                        lora: lora_shape.to_vec(),
                    });
                }
                changes.push((tensor, change));
                Ok(())
            };
            match (get(Part::Down), get(Part::Up)) {
                (Some((down, ds)), Some((up, us))) => {
                    let (rank_down, rank_up) = (ds.first().copied().unwrap_or(0), us.get(1).copied().unwrap_or(0));
                    if rank_down != rank_up || rank_down == 0 {
                        return Err(LoraError::Rank {
                            path: path.to_path_buf(),
                            module: module.clone(),
                            down: rank_down,
                            up: rank_up,
                        });
                    }
                    let cols = ds.iter().skip(1).product::<usize>();
                    let alpha = match get(Part::Alpha) {
                        Some((k, _)) => Some(read_scalar(path, &lora, k)?),
                        None => metadata_alpha,
                    };
                    let change = Change::LowRank { down: down.clone(), up: up.clone(), rank: rank_down, alpha };
                    target(format!("{module}.weight"), change, &[us[0], cols])?;
                }
                (Some((k, _)), None) | (None, Some((k, _))) => {
                    return Err(LoraError::Rank {
                        path: path.to_path_buf(),
                        module: format!("{module} (only {k})"),
                        down: get(Part::Down).map(|(_, s)| s[0]).unwrap_or(0),
                        up: get(Part::Up).and_then(|(_, s)| s.get(1).copied()).unwrap_or(0),
                    })
                }
                (None, None) => {}
            }
            if let Some((k, s)) = get(Part::Diff) {
                target(format!("{module}.weight"), Change::Full { key: k.clone() }, s)?;
            }
            if let Some((k, s)) = get(Part::DiffBias) {
                target(format!("{module}.bias"), Change::Full { key: k.clone() }, s)?;
            }
            if let Some((k, s)) = get(Part::DiffModulation) {
                target(format!("{module}.scale_shift_table"), Change::Full { key: k.clone() }, s)?;
            }
        }
        if !unmatched.is_empty() {
            let first: Vec<&str> = unmatched.iter().take(LIST).map(String::as_str).collect();
            return Err(LoraError::Unmatched {
                path: path.to_path_buf(),
                target: format!("{num_layers} blocks"),
                count: unmatched.len(),
                first: first.join(", "),
            });
        }
        if changes.is_empty() {
            return Err(LoraError::Empty { path: path.to_path_buf() });
        }
        Ok(Self { path: path.to_path_buf(), changes })
    }

    /// Number of model tensors this LoRA changes.
    pub fn tensors(&self) -> usize {
        let mut names: Vec<&String> = self.changes.iter().map(|(t, _)| t).collect();
        names.dedup();
        names.len()
    }

    /// Reads the LoRA's tensors and adds its deltas at `strength` to `deltas`.
    pub fn add_to(&self, strength: f64, deltas: &mut Deltas) -> Result<(), LoraError> {
        let read_err = |e: String| LoraError::Read { path: self.path.clone(), msg: e };
        let table =
            ComponentWeights::diffusers(vec![self.path.clone()]).table().map_err(|e| read_err(e.to_string()))?;
        let full = |key: &str| -> Result<Tensor, LoraError> {
            let e = table.get(key).ok_or_else(|| read_err(format!("no tensor {key}")))?;
            table
                .read_range(key, 0..e.numel())
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| read_err(e.to_string()))
        };
        for (tensor, change) in &self.changes {
            let delta = match change {
                Change::Full { key } => Delta::Full { diff: full(key)?, scale: strength },
                Change::LowRank { down, up, rank, alpha } => {
                    let up_t = full(up)?;
                    let down_t = full(down)?;
                    let out = up_t.elem_count() / rank;
                    let cols = down_t.elem_count() / rank;
                    let reshape =
                        |t: Tensor, shape: (usize, usize)| t.reshape(shape).map_err(|e| read_err(e.to_string()));
                    Delta::LowRank {
                        up: reshape(up_t, (out, *rank))?,
                        down: reshape(down_t, (*rank, cols))?,
                        scale: strength * alpha.map(|a| a / *rank as f64).unwrap_or(1.0),
                    }
                }
            };
            deltas.push(tensor.clone(), delta);
        }
        Ok(())
    }
}

fn read_scalar(path: &Path, table: &TensorTable, key: &str) -> Result<f64, LoraError> {
    let t = table
        .read_range(key, 0..1)
        .and_then(|t| t.to_dtype(DType::F64)?.to_vec1::<f64>())
        .map_err(|e| LoraError::Read { path: path.to_path_buf(), msg: format!("{key}: {e}") })?;
    Ok(t[0])
}
