//! Component files and LoRAs on the Setup panel: optional pickers for the transformer(s), VAE, text
//! encoder, tokenizer and config, and a LoRA list (file, strength, expert). They edit
//! `Settings::files`, the engine's `ModelFiles` — the same request field the CLI's `--transformer …
//! --lora` flags fill, so the studio has no second path. Also what the model reader found and
//! assumed (`ModelSpec`: layout, components and their key dialects, `assumed:` lines).

use std::path::PathBuf;

use eframe::egui;
use tessera_engine::api::{Field, KeyDialect, LoraSpec, LoraTarget, ModelFiles, ModelSpec};

use crate::studio::browse::{Background, FileSlot, Target};
use crate::studio::theme;

/// The single-path slots, in the order the form shows them, with their form field.
const SLOTS: [(FileSlot, Field, &str); 6] = [
    (FileSlot::Transformer, Field::Transformer, "Transformer file (ComfyUI / Wan-native / diffusers names)"),
    (FileSlot::Transformer2, Field::Transformer2, "A14B low-noise expert file"),
    (FileSlot::Vae, Field::Vae, "VAE file (wan_2.1_vae / wan2.2_vae or diffusers names)"),
    (
        FileSlot::TextEncoder,
        Field::TextEncoder,
        "UMT5 file (umt5_xxl_fp16 / fp8_e4m3fn_scaled) or text_encoder/ folder",
    ),
    (FileSlot::Tokenizer, Field::Tokenizer, "tokenizer.json, or a folder holding it"),
    (FileSlot::Config, Field::Config, "config.json or a folder with the configs the files' shapes cannot settle"),
];

fn slot_mut(files: &mut ModelFiles, slot: FileSlot) -> Option<&mut Option<PathBuf>> {
    Some(match slot {
        FileSlot::Transformer => &mut files.transformer,
        FileSlot::Transformer2 => &mut files.transformer_2,
        FileSlot::Vae => &mut files.vae,
        FileSlot::TextEncoder => &mut files.text_encoder,
        FileSlot::Tokenizer => &mut files.tokenizer,
        FileSlot::Config => &mut files.config,
        FileSlot::Lora(_) => return None,
    })
}

/// Puts a picked path into its slot.
pub fn apply_pick(files: &mut ModelFiles, slot: FileSlot, path: PathBuf) {
    match slot {
        FileSlot::Lora(i) => {
            if let Some(lora) = files.loras.get_mut(i) {
                lora.path = path;
            }
        }
        _ => {
            if let Some(field) = slot_mut(files, slot) {
                *field = Some(path);
            }
        }
    }
}

/// A path as an editable text; an empty text is no path.
fn path_edit(ui: &mut egui::Ui, label: egui::Id, path: &mut Option<PathBuf>, hint: &str) {
    let mut text = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let edit = ui.add(egui::TextEdit::singleline(&mut text).desired_width(170.0).hint_text("none")).labelled_by(label);
    if edit.changed() {
        let t = text.trim();
        *path = (!t.is_empty()).then(|| PathBuf::from(t));
    }
    edit.on_hover_text(hint);
}

/// The component-file pickers and the LoRA list.
pub fn model_files_ui(ui: &mut egui::Ui, files: &mut ModelFiles, background: &Background) {
    egui::CollapsingHeader::new("Component files and LoRAs").default_open(!files.is_empty()).show(ui, |ui| {
        ui.weak("Each file replaces that part of the model folder (or stands in for it: no folder needed).");
        egui::Grid::new("model-files").num_columns(3).show(ui, |ui| {
            for (slot, field, hint) in SLOTS {
                let label = ui.label(field.label());
                if let Some(path) = slot_mut(files, slot) {
                    path_edit(ui, label.id, path, hint);
                }
                if ui.button("Browse…").on_hover_text(hint).clicked() {
                    background.pick(Target::File(slot), ui.ctx());
                }
                ui.end_row();
            }
        });
        loras_ui(ui, files, background);
    });
}

fn loras_ui(ui: &mut egui::Ui, files: &mut ModelFiles, background: &Background) {
    let mut remove = None;
    for (i, lora) in files.loras.iter_mut().enumerate() {
        let n = i + 1;
        ui.horizontal(|ui| {
            let label = ui.label(format!("LoRA {n} file"));
            let mut path = Some(lora.path.clone()).filter(|p| !p.as_os_str().is_empty());
            path_edit(ui, label.id, &mut path, "lightx2v/Kijai, diffusers/PEFT or Kohya LoRA (.safetensors)");
            lora.path = path.unwrap_or_default();
            if ui.button("Browse…").clicked() {
                background.pick(Target::File(FileSlot::Lora(i)), ui.ctx());
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label(format!("LoRA {n} strength"));
            ui.add(egui::DragValue::new(&mut lora.strength).range(-4.0..=4.0).speed(0.05)).labelled_by(label.id);
            let label = ui.label(format!("LoRA {n} expert"));
            let name = |t: LoraTarget| match t {
                LoraTarget::All => "all",
                LoraTarget::High => "high (transformer)",
                LoraTarget::Low => "low (transformer 2)",
            };
            egui::ComboBox::from_id_salt(("lora-target", i))
                .selected_text(name(lora.target))
                .show_ui(ui, |ui| {
                    for t in [LoraTarget::All, LoraTarget::High, LoraTarget::Low] {
                        ui.selectable_value(&mut lora.target, t, name(t));
                    }
                })
                .response
                .labelled_by(label.id);
            if ui.button(format!("Remove LoRA {n}")).clicked() {
                remove = Some(i);
            }
        });
    }
    if let Some(i) = remove {
        files.loras.remove(i);
    }
    if ui.button("Add LoRA").on_hover_text("Merged into the weights at load, as --lora FILE:STRENGTH@EXPERT").clicked()
    {
        files.loras.push(LoraSpec { path: PathBuf::new(), strength: 1.0, target: LoraTarget::All });
    }
}

/// What the model reader found: layout and components (with their key dialects), the LoRAs, and
/// the `assumed:` lines (published settings the files cannot tell).
pub fn detection_ui(ui: &mut egui::Ui, spec: &ModelSpec) {
    let c = &spec.components;
    let dialect = |d: &KeyDialect| match d {
        KeyDialect::Diffusers => "diffusers names".to_string(),
        KeyDialect::WanNative { prefix } if prefix.is_empty() => "Wan-native names".to_string(),
        KeyDialect::WanNative { prefix } => format!("Wan-native names, prefix {prefix}"),
    };
    let file = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut lines = vec![format!("transformer: {} ({})", file(&c.transformer.path), dialect(&c.transformer.keys))];
    if let Some(t2) = &c.transformer_2 {
        lines.push(format!("transformer 2: {} ({})", file(&t2.path), dialect(&t2.keys)));
    }
    lines.push(format!("vae: {} ({})", file(&c.vae.path), dialect(&c.vae.keys)));
    if let Some(text) = spec.text_model() {
        lines.push(format!("text encoder: {} + {}", file(&text.encoder), file(&text.tokenizer)));
    }
    for lora in &spec.files.loras {
        lines.push(format!("LoRA: {lora}"));
    }
    for line in lines {
        ui.label(line);
    }
    for a in &spec.assumed {
        ui.colored_label(theme::NOTE, format!("assumed: {a}"));
    }
}
