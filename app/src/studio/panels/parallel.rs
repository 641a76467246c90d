//! Parallel panel: the devices found, the plan (ranks, Ulysses, CFG parallel, FSDP, VAE parallel
//! and mode, tiling, text encoder), a verdict per device, and Generate / Cancel.

use eframe::egui;
use tessera_engine::parallel::plan::{PlanModel, TextEncoderPlacement, TilingSpec, VaeMode};
use tessera_engine::runtime::protocol::DeviceKind;

use crate::studio::app::StudioApp;
use crate::studio::settings_ui::field;
use crate::studio::theme;

pub fn parallel_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    devices_ui(ui, app);
    ui.separator();
    plan_ui(ui, app);
    ui.separator();
    verdict_ui(ui, app);
    ui.separator();
    ui.horizontal(|ui| {
        let busy = app.live.status.is_busy();
        if ui.add_enabled(!busy, egui::Button::new("Generate")).clicked() {
            app.generate();
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
            app.cancel();
        }
    });
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
        Some(Ok(info)) => Some(info.num_heads),
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
        ui.colored_label(theme::BAD, e.to_string());
    }
}

/// Per device: the measured peak of the last run against the device's capacity. Predictions
/// appear here once the memory planner is available; nothing is guessed.
fn verdict_ui(ui: &mut egui::Ui, app: &StudioApp) {
    ui.strong("Memory per device");
    let traces = &app.live.ranks;
    if traces.is_empty() {
        ui.weak("Measured peaks appear here during a run.");
        return;
    }
    let ranks = traces.len().max(1) as u64;
    let host_ram = app.devices.as_ref().map(|d| d.cpu.ram_total_bytes).unwrap_or(0);
    for (rank, trace) in traces.iter().enumerate() {
        let peak = trace.memory.iter().map(|m| m.peak_bytes).max().unwrap_or(0);
        // CPU ranks share the host RAM; GPUs report their own total.
        let capacity = trace.device_total_bytes.unwrap_or(host_ram / ranks);
        let fraction = if capacity > 0 { peak as f32 / capacity as f32 } else { 0.0 };
        let text = format!("rank {rank}: peak {} of {}", theme::bytes(peak), theme::bytes(capacity));
        ui.add(egui::ProgressBar::new(fraction.min(1.0)).text(text).fill(theme::rank_color(rank)));
    }
}
