//! Parallel panel: the devices found, the plan (ranks, Ulysses, CFG parallel, FSDP, VAE parallel
//! and mode, tiling, text encoder), presets, a verdict per device; and the Generate / Cancel buttons.

use eframe::egui;
use tessera_engine::api::devices::GpuReport;
use tessera_engine::api::{DeviceKind, PlanModel, RequestError, Residency, TextEncoderPlacement, TilingSpec, VaeMode};

use crate::studio::app::StudioApp;
use crate::studio::engine::Command;
use crate::studio::settings_ui::field;
use crate::studio::{presets, theme};

pub fn parallel_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    devices_ui(ui, app);
    ui.separator();
    presets_ui(ui, app);
    plan_ui(ui, app);
    ui.separator();
    verdict_ui(ui, app);
}

/// Generate / Cancel (in the top bar, always visible).
pub fn run_buttons_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let busy = app.live.status.is_busy();
    if ui.add_enabled(!busy, egui::Button::new("Generate")).clicked() {
        app.generate();
    }
    if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
        app.cancel();
    }
}

fn devices_ui(ui: &mut egui::Ui, app: &StudioApp) {
    ui.strong("Devices");
    let ranks = app.settings.plan.ranks.max(1);
    match (&app.devices, app.device_kind()) {
        (Some(report), DeviceKind::Cuda) => {
            for g in &report.nvml.gpus {
                ui.label(format!("GPU {}: {} — {}", g.index, g.name, theme::bytes(g.mem_total_bytes)));
            }
        }
        (report, DeviceKind::Cpu) => {
            let ram = report.as_ref().map(|r| r.cpu.ram_total_bytes).unwrap_or(0);
            let cores = report.as_ref().map(|r| r.cpu.logical_cores).unwrap_or(0);
            ui.label(format!(
                "{ranks} CPU virtual device{} ({} cores, {} RAM shared)",
                if ranks == 1 { "" } else { "s" },
                cores,
                theme::bytes(ram)
            ));
            if let Some(e) = report.as_ref().and_then(|r| r.nvml.error.as_ref()) {
                ui.weak(format!("No GPU: {e}"));
            }
        }
        (None, DeviceKind::Cuda) => {
            ui.label("Looking for devices…");
        }
    }
}

fn plan_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let num_heads = match &app.model.info {
        Some(Ok(info)) => Some(info.num_heads()),
        _ => None,
    };
    let cfg = app.settings.guidance > 1.0;
    let plan = &mut app.settings.plan;
    let before = *plan;
    egui::Grid::new("plan-grid").num_columns(2).show(ui, |ui| {
        field(ui, "Ranks", egui::DragValue::new(&mut plan.ranks).range(1..=64));
        field(ui, "Ulysses", egui::DragValue::new(&mut plan.ulysses).range(1..=64));
        field(ui, "CFG parallel", egui::DragValue::new(&mut plan.cfg_parallel).range(1..=2));
        field(ui, "FSDP", egui::DragValue::new(&mut plan.fsdp).range(1..=64));
        field(ui, "VAE parallel", egui::DragValue::new(&mut plan.vae_parallel).range(1..=64));
        let label = ui.label("VAE mode");
        egui::ComboBox::from_id_salt("vae-mode")
            .selected_text(plan.vae_mode.to_string())
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut plan.vae_mode, VaeMode::Halo, "halo");
                ui.selectable_value(&mut plan.vae_mode, VaeMode::Tiles, "tiles");
            })
            .response
            .labelled_by(label.id);
        ui.end_row();
        let label = ui.label("Text encoder");
        egui::ComboBox::from_id_salt("text-encoder")
            .selected_text(plan.text_encoder.to_string())
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut plan.text_encoder, TextEncoderPlacement::Cpu, "cpu");
                ui.selectable_value(&mut plan.text_encoder, TextEncoderPlacement::Sharded, "sharded");
            })
            .response
            .labelled_by(label.id);
        ui.end_row();
        // Two-expert models only: both experts loaded (pipeline) or the running one (phased).
        let label = ui.label("Expert residency");
        egui::ComboBox::from_id_salt("residency")
            .selected_text(plan.residency.to_string())
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut plan.residency, Residency::Pipeline, "pipeline");
                ui.selectable_value(&mut plan.residency, Residency::Phased, "phased");
            })
            .response
            .labelled_by(label.id);
        ui.end_row();
    });
    // Tiles need a tile plan, halo forbids one: keep the pair consistent as the mode flips.
    match plan.vae_mode {
        VaeMode::Tiles => {
            let t = plan.vae_tiling.get_or_insert_with(TilingSpec::default);
            egui::Grid::new("tiling-grid").num_columns(2).show(ui, |ui| {
                field(ui, "Tile height", egui::DragValue::new(&mut t.tile_height).range(32..=2048).speed(16));
                field(ui, "Tile width", egui::DragValue::new(&mut t.tile_width).range(32..=2048).speed(16));
                field(ui, "Stride height", egui::DragValue::new(&mut t.stride_height).range(16..=2048).speed(16));
                field(ui, "Stride width", egui::DragValue::new(&mut t.stride_width).range(16..=2048).speed(16));
            });
        }
        VaeMode::Halo => plan.vae_tiling = None,
    }
    if *plan != before {
        // An edited plan is no longer the preset it came from.
        app.settings.preset = None;
    }
    let check = match num_heads {
        Some(num_heads) => app.settings.plan.validate(PlanModel { num_heads, cfg }),
        None => Ok(()),
    };
    if let Err(e) = check {
        ui.colored_label(theme::BAD, RequestError::from(e).to_string());
    }
}

fn presets_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let current = app.settings.preset.clone().unwrap_or_else(|| "(custom plan)".into());
    let family = match &app.model.info {
        Some(Ok(info)) => Some(info.family),
        _ => None,
    };
    let mut picked = None;
    ui.horizontal(|ui| {
        let label = ui.label("Preset");
        egui::ComboBox::from_id_salt("preset")
            .selected_text(&current)
            .width(190.0)
            .show_ui(ui, |ui| {
                // The presets sized for this model's family first, then the others.
                let (mine, others) = presets::by_family(&app.presets, family);
                for (n, group) in [mine, others].into_iter().enumerate() {
                    if n == 1 && !group.is_empty() && family.is_some() {
                        ui.separator();
                        ui.weak("for other models");
                    }
                    for i in group {
                        let p = &app.presets[i];
                        let r = ui.selectable_label(app.settings.preset.as_deref() == Some(&p.name), &p.name);
                        if r.on_hover_text(&p.description).clicked() {
                            picked = Some(i);
                        }
                    }
                }
            })
            .response
            .labelled_by(label.id);
        if ui.button("Save preset…").on_hover_text("Save this plan and size under a name").clicked() {
            app.view.preset_dialog_open = true;
        }
    });
    if let Some(p) = picked.and_then(|i| app.presets.get(i)) {
        presets::apply(p, &mut app.settings);
    }
    if let Some(p) = app.settings.preset.as_ref().and_then(|name| app.presets.iter().find(|p| &p.name == name)) {
        ui.weak(&p.description);
    }
    if app.view.preset_dialog_open {
        let mut open = true;
        let mut save = false;
        egui::Window::new("Save preset").open(&mut open).collapsible(false).show(ui.ctx(), |ui| {
            let label = ui.label("Preset name");
            ui.text_edit_singleline(&mut app.view.preset_name).labelled_by(label.id);
            if let Err(e) = presets::valid_name(&app.view.preset_name) {
                ui.colored_label(theme::BAD, e);
            } else if ui.button("Save").clicked() {
                save = true;
            }
        });
        if save {
            let name = app.view.preset_name.trim().to_string();
            app.settings.preset = Some(name.clone());
            app.outbox.push(Command::SavePreset(name, Box::new(app.settings.clone())));
            open = false;
        }
        app.view.preset_dialog_open = open;
    }
}

/// Per device: the planner's predicted peak and, once a run reports, the measured peak, each
/// against the device's capacity (GPU memory, or the host RAM shared by the CPU ranks).
fn verdict_ui(ui: &mut egui::Ui, app: &StudioApp) {
    ui.strong("Memory per device");
    let ranks = app.settings.plan.ranks.max(1);
    let host_ram = app.devices.as_ref().map(|d| d.cpu.ram_total_bytes).unwrap_or(0);
    let gpus: Vec<&GpuReport> = match app.device_kind() {
        DeviceKind::Cuda => app.devices.iter().flat_map(|d| d.nvml.gpus.iter()).collect(),
        DeviceKind::Cpu => Vec::new(),
    };
    let predicted = match &app.prediction {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            ui.weak(format!("No prediction: {e}"));
            None
        }
        None => None,
    };
    for rank in 0..ranks {
        // Rank r runs on GPU r (the launcher's order); CPU ranks share the host's RAM.
        let gpu = gpus.get(rank);
        let capacity = gpu.map(|g| g.mem_total_bytes).unwrap_or(host_ram / ranks as u64);
        let device = match gpu {
            Some(g) => format!("GPU {}: {}, {}", g.index, g.name, theme::bytes(g.mem_total_bytes)),
            None if gpus.is_empty() => format!("CPU virtual device, 1/{ranks} of the RAM"),
            None => "no GPU left for this rank".to_string(),
        };
        ui.colored_label(theme::rank_color(rank), format!("rank {rank} — {device}"));
        let bar = |bytes: u64, what: &str| {
            let fraction = if capacity > 0 { bytes as f32 / capacity as f32 } else { 0.0 };
            let fill = if fraction > 1.0 { theme::BAD } else { theme::rank_color(rank) };
            let text = format!("rank {rank} {what} {} of {}", theme::bytes(bytes), theme::bytes(capacity));
            egui::ProgressBar::new(fraction.min(1.0)).text(text).fill(fill)
        };
        if let Some(p) = predicted {
            // Ranks outside the VAE group idle during the decode: nothing predicted for them.
            let peak = p.iter().find(|r| r.rank == rank).map(|r| r.peak_bytes).unwrap_or(0);
            ui.add(bar(peak, "predicted"));
        }
        if let Some(trace) = app.live.ranks.get(rank) {
            let measured = trace.memory.iter().map(|m| m.peak_bytes).max().unwrap_or(0);
            ui.add(bar(measured, "measured"));
        }
    }
    if predicted.is_some_and(|p| p.iter().any(|r| gpus.is_empty() && r.peak_bytes > host_ram / ranks as u64)) {
        ui.colored_label(theme::BAD, "Predicted not to fit: lower the size, or raise VAE parallel / use tiles.");
    }
}
