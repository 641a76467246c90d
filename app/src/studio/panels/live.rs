//! Live view: run status and progress (phase, step i/N, it/s, ETA), one memory chart with a used
//! and a peak line per device and the finished phases as bands, the denoise preview (updated
//! after every step), then the decode mosaic.

use eframe::egui;
use egui_plot::{HLine, Legend, Line, LineStyle, Plot, PlotPoints, Span};

use crate::studio::app::StudioApp;
use crate::studio::state::{LiveRun, RunStatus};
use crate::studio::{demo, theme};

pub fn live_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    status_ui(ui, &app.live);
    if app.settings.use_demo {
        ui.colored_label(theme::NOTE, demo::note());
    }
    let predicted: Vec<(usize, u64)> = match &app.prediction {
        Some(Ok(p)) => p.iter().map(|r| (r.rank, r.peak_bytes)).collect(),
        _ => Vec::new(),
    };
    // The denoise preview sits beside the chart, so the mosaic below keeps its place.
    let preview_width = if app.textures.denoise.is_some() { PREVIEW_BOX.x + 16.0 } else { 0.0 };
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width((ui.available_width() - preview_width).max(240.0));
            memory_chart_ui(ui, &app.live, &predicted);
        });
        denoise_preview_ui(ui, app);
    });
    if !app.live.log.is_empty() {
        egui::CollapsingHeader::new(format!("Worker log ({} lines)", app.live.log.len())).show(ui, |ui| {
            // The latest lines; the full log goes to stderr with a `[rank N]` prefix.
            for line in app.live.log.iter().rev().take(LOG_LINES).rev() {
                ui.monospace(line);
            }
        });
    }
    ui.separator();
    super::mosaic::mosaic_ui(ui, app);
}

/// The picture the denoise is making: the x0 estimate of the latest step, projected latent→RGB
/// (no VAE), scaled up to a readable size.
fn denoise_preview_ui(ui: &mut egui::Ui, app: &StudioApp) {
    let (Some(p), Some((_, texture))) = (&app.live.denoise_preview, &app.textures.denoise) else { return };
    ui.vertical(|ui| {
        ui.label(format!(
            "Denoise preview after step {}/{} (latent to RGB, {}×{})",
            p.step, p.total, p.preview.width, p.preview.height
        ));
        let size = texture.size_vec2().max(egui::vec2(1.0, 1.0));
        // Scaled up to fill the box beside the chart, keeping the aspect.
        let scale = (PREVIEW_BOX.x / size.x).min(PREVIEW_BOX.y / size.y).max(1.0);
        ui.image((texture.id(), size * scale));
    });
}

/// The denoise preview's box on screen, in points (the memory chart is 220 high).
const PREVIEW_BOX: egui::Vec2 = egui::vec2(320.0, 200.0);

/// Worker log lines shown under the chart.
const LOG_LINES: usize = 40;

fn status_ui(ui: &mut egui::Ui, live: &LiveRun) {
    let text = match &live.status {
        RunStatus::Idle => "Idle: press Generate.".to_string(),
        RunStatus::Preparing(what) => format!("Preparing: {what}…"),
        RunStatus::Running => {
            format!("Running on {} rank{}", live.world_size, if live.world_size == 1 { "" } else { "s" })
        }
        RunStatus::Finished { wall_seconds } => format!("Finished in {wall_seconds:.2} s"),
        RunStatus::Failed(e) => format!("Failed: {e}"),
        RunStatus::Cancelled => "Cancelled".to_string(),
    };
    ui.label(text);
    let p = &live.progress;
    if p.total > 0 {
        let mut line = format!("{} step {}/{}", p.message, p.step, p.total);
        if let Some(rate) = p.steps_per_sec() {
            line += &format!(", {rate:.2} it/s");
        }
        if let (Some(eta), true) = (p.eta_secs(), live.status.is_busy()) {
            line += &format!(", ETA {eta:.1} s");
        }
        ui.add(egui::ProgressBar::new(p.step as f32 / p.total as f32).text(line));
    }
}

/// `predicted`: the planner's peak per rank, drawn dashed. The axis is in MiB or GiB, whichever
/// suits the largest value drawn. Before any sample (or after a run that failed before the workers
/// reported) there is nothing to chart: a line says so instead of an empty axis.
fn memory_chart_ui(ui: &mut egui::Ui, live: &LiveRun, predicted: &[(usize, u64)]) {
    let samples: usize = live.ranks.iter().map(|r| r.memory.len()).sum();
    if samples == 0 {
        ui.label("Memory per device");
        ui.weak(match live.status {
            RunStatus::Failed(_) | RunStatus::Cancelled => {
                "No memory samples: the run stopped before the workers reported."
            }
            _ => "Memory per device over time appears here once the workers report.",
        });
        return;
    }
    let largest = live.ranks.iter().flat_map(|r| r.memory.iter().map(|m| m.peak_bytes.max(m.used_bytes)));
    let unit = theme::memory_unit(largest.chain(predicted.iter().map(|p| p.1)).max().unwrap_or(0));
    ui.label(format!("Memory per device ({} over seconds) — {samples} samples", unit.name));
    Plot::new("memory-chart")
        .legend(Legend::default())
        .height(220.0)
        .include_y(0.0)
        .x_axis_label("seconds")
        .y_axis_label(unit.name)
        .show(ui, |plot| {
            // Phase bands of rank 0 (all ranks run the same phases; rank 0's are representative).
            if let Some(r0) = live.ranks.first() {
                for (i, phase) in r0.phases.iter().enumerate() {
                    let shade = if i % 2 == 0 { 40 } else { 25 };
                    plot.span(
                        Span::new(phase.name.clone(), phase.start_secs..=phase.start_secs + phase.seconds)
                            .fill(egui::Color32::from_white_alpha(shade)),
                    );
                }
            }
            for &(rank, bytes) in predicted {
                plot.hline(
                    HLine::new(format!("rank {rank} predicted peak"), bytes as f64 / unit.bytes)
                        .color(theme::rank_color(rank))
                        .style(LineStyle::dashed_loose()),
                );
            }
            for (rank, trace) in live.ranks.iter().enumerate() {
                let color = theme::rank_color(rank);
                let used: PlotPoints =
                    trace.memory.iter().map(|m| [m.elapsed_secs, m.used_bytes as f64 / unit.bytes]).collect();
                let peak: PlotPoints =
                    trace.memory.iter().map(|m| [m.elapsed_secs, m.peak_bytes as f64 / unit.bytes]).collect();
                plot.line(Line::new(format!("rank {rank} used"), used).color(color).width(2.0));
                plot.line(
                    Line::new(format!("rank {rank} peak"), peak).color(color).style(LineStyle::Dotted { spacing: 6.0 }),
                );
            }
        });
}
