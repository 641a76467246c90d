//! Live view: run status and progress (phase, step i/N, it/s, ETA), one memory chart with a used
//! and a peak line per device and the finished phases as bands, the denoise preview (updated
//! after every step), then the decode mosaic.

use eframe::egui;
use egui_plot::{HLine, Legend, Line, LineStyle, Plot, PlotPoints, Span};

use crate::studio::app::StudioApp;
use crate::studio::state::{LiveRun, RunStatus};
use crate::studio::{demo, theme};

const MIB: f64 = (1u64 << 20) as f64;

pub fn live_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    status_ui(ui, &app.live);
    if app.settings.use_demo {
        ui.colored_label(theme::NOTE, demo::NOISE_NOTE);
    }
    let predicted: Vec<(usize, u64)> = match &app.prediction {
        Some(Ok(p)) => p.iter().map(|r| (r.rank, r.peak_bytes)).collect(),
        _ => Vec::new(),
    };
    memory_chart_ui(ui, &app.live, &predicted);
    if !app.live.log.is_empty() {
        egui::CollapsingHeader::new(format!("Worker log ({} lines)", app.live.log.len())).show(ui, |ui| {
            // The latest lines; the full log goes to stderr with a `[rank N]` prefix.
            for line in app.live.log.iter().rev().take(LOG_LINES).rev() {
                ui.monospace(line);
            }
        });
    }
    denoise_preview_ui(ui, app);
    ui.separator();
    super::mosaic::mosaic_ui(ui, app);
}

/// The picture the denoise is making: the x0 estimate of the latest step, projected latent→RGB
/// (no VAE), scaled up to a readable size.
fn denoise_preview_ui(ui: &mut egui::Ui, app: &StudioApp) {
    let (Some(p), Some((_, texture))) = (&app.live.denoise_preview, &app.textures.denoise) else { return };
    ui.separator();
    ui.label(format!(
        "Denoise preview after step {}/{} (latent→RGB, {}×{})",
        p.step, p.total, p.preview.width, p.preview.height
    ));
    let size = texture.size_vec2();
    let scale = (PREVIEW_SHOWN_SIDE / size.x.max(size.y).max(1.0)).max(1.0);
    ui.image((texture.id(), size * scale));
}

/// Long side of the denoise preview on screen, in points.
const PREVIEW_SHOWN_SIDE: f32 = 320.0;

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

/// `predicted`: the planner's peak per rank, drawn dashed.
fn memory_chart_ui(ui: &mut egui::Ui, live: &LiveRun, predicted: &[(usize, u64)]) {
    let samples: usize = live.ranks.iter().map(|r| r.memory.len()).sum();
    ui.label(format!("Memory per device (MiB over seconds) — {samples} samples"));
    Plot::new("memory-chart")
        .legend(Legend::default())
        .height(220.0)
        .include_y(0.0)
        .x_axis_label("seconds")
        .y_axis_label("MiB")
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
                    HLine::new(format!("rank {rank} predicted peak"), bytes as f64 / MIB)
                        .color(theme::rank_color(rank))
                        .style(LineStyle::dashed_loose()),
                );
            }
            for (rank, trace) in live.ranks.iter().enumerate() {
                let color = theme::rank_color(rank);
                let used: PlotPoints =
                    trace.memory.iter().map(|m| [m.elapsed_secs, m.used_bytes as f64 / MIB]).collect();
                let peak: PlotPoints =
                    trace.memory.iter().map(|m| [m.elapsed_secs, m.peak_bytes as f64 / MIB]).collect();
                plot.line(Line::new(format!("rank {rank} used"), used).color(color).width(2.0));
                plot.line(
                    Line::new(format!("rank {rank} peak"), peak).color(color).style(LineStyle::Dotted { spacing: 6.0 }),
                );
            }
        });
}
