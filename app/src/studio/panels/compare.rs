//! Compare: every recorded run in a table, grouped bars of peak memory per rank and time per
//! phase across runs, and the difference between two ticked runs.

use eframe::egui;
use egui_plot::{Bar, BarChart, Legend, Plot};

use crate::studio::app::StudioApp;
use crate::studio::records::RunRecord;
use crate::studio::theme;

pub fn compare_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    if app.runs.runs.is_empty() {
        ui.label("Finished runs are recorded here (kept across restarts) to compare presets.");
        return;
    }
    table_ui(ui, app);
    ui.separator();
    diff_ui(ui, app);
    ui.separator();
    charts_ui(ui, &app.runs.runs);
}

fn table_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let mut delete = None;
    egui::ScrollArea::vertical().id_salt("runs-table").max_height(180.0).show(ui, |ui| {
        egui::Grid::new("runs-grid").striped(true).num_columns(5).show(ui, |ui| {
            for h in ["run (tick two to diff)", "job", "wall", "max peak", "phases"] {
                ui.strong(h);
            }
            ui.end_row();
            for run in &app.runs.runs {
                let mut ticked = app.view.compare_selected.contains(&run.id);
                if ui.checkbox(&mut ticked, run.title()).on_hover_text("Tick two runs to diff them").changed() {
                    if ticked {
                        app.view.compare_selected.push(run.id);
                    } else {
                        app.view.compare_selected.retain(|id| *id != run.id);
                    }
                }
                ui.label(&run.job);
                ui.label(format!("{:.2} s", run.report.wall_seconds));
                ui.label(theme::bytes(run.max_peak_bytes()));
                let phases: Vec<String> = run.phase_seconds().iter().map(|(n, s)| format!("{n} {s:.2} s")).collect();
                ui.horizontal(|ui| {
                    ui.label(phases.join(", "));
                    if ui.small_button("Delete").clicked() {
                        delete = Some(run.id);
                    }
                });
                ui.end_row();
            }
        });
    });
    if let Some(id) = delete {
        app.view.compare_selected.retain(|s| *s != id);
        if let Err(e) = app.runs.remove(id) {
            app.messages.error(e);
        }
    }
}

fn diff_ui(ui: &mut egui::Ui, app: &StudioApp) {
    let picked: Vec<&RunRecord> =
        app.view.compare_selected.iter().filter_map(|id| app.runs.runs.iter().find(|r| r.id == *id)).take(2).collect();
    let [a, b] = picked[..] else {
        ui.weak("Tick two runs to see their difference.");
        return;
    };
    ui.strong(format!("{}  ->  {}", a.title(), b.title()));
    let pct = |x: f64, y: f64| if x > 0.0 { format!("{:+.0}%", (y - x) / x * 100.0) } else { "n/a".into() };
    ui.label(format!(
        "wall {:.2} s -> {:.2} s ({}); max peak {} -> {} ({})",
        a.report.wall_seconds,
        b.report.wall_seconds,
        pct(a.report.wall_seconds, b.report.wall_seconds),
        theme::bytes(a.max_peak_bytes()),
        theme::bytes(b.max_peak_bytes()),
        pct(a.max_peak_bytes() as f64, b.max_peak_bytes() as f64),
    ));
    for (name, sa) in a.phase_seconds() {
        if let Some((_, sb)) = b.phase_seconds().into_iter().find(|(n, _)| *n == name) {
            ui.label(format!("{name}: {sa:.2} s -> {sb:.2} s ({})", pct(sa, sb)));
        }
    }
}

/// Bars grouped by run: one bar per rank (peak memory), one per phase (slowest rank's time).
fn charts_ui(ui: &mut egui::Ui, runs: &[RunRecord]) {
    let max_ranks = runs.iter().map(|r| r.report.ranks.len()).max().unwrap_or(1).max(1);
    let width = 0.8 / max_ranks as f64;
    let rank_peak = |r: &tessera_engine::api::RankReport| {
        r.phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0).max(r.peak_bytes)
    };
    let unit =
        theme::memory_unit(runs.iter().flat_map(|run| run.report.ranks.iter().map(rank_peak)).max().unwrap_or(0));
    ui.columns(2, |cols| {
        cols[0].label(format!("Peak memory per rank ({}), by run", unit.name));
        Plot::new("compare-memory")
            .legend(Legend::default())
            .height(200.0)
            .x_axis_label("run (table order, from 0)")
            .show(&mut cols[0], |plot| {
                for rank in 0..max_ranks {
                    let bars = runs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, run)| {
                            let r = run.report.ranks.get(rank)?;
                            let x = i as f64 + (rank as f64 - (max_ranks - 1) as f64 / 2.0) * width;
                            Some(
                                Bar::new(x, rank_peak(r) as f64 / unit.bytes).width(width).name(format!("#{}", run.id)),
                            )
                        })
                        .collect();
                    plot.bar_chart(BarChart::new(format!("rank {rank}"), bars).color(theme::rank_color(rank)));
                }
            });
        let mut phases: Vec<String> = Vec::new();
        for run in runs {
            for (name, _) in run.phase_seconds() {
                if !phases.contains(&name) {
                    phases.push(name);
                }
            }
        }
        let width = 0.8 / phases.len().max(1) as f64;
        cols[1].label("Time per phase (s), by run");
        Plot::new("compare-time")
            .legend(Legend::default())
            .height(200.0)
            .x_axis_label("run (table order, from 0)")
            .show(&mut cols[1], |plot| {
                for (k, phase) in phases.iter().enumerate() {
                    let bars = runs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, run)| {
                            let (_, s) = run.phase_seconds().into_iter().find(|(n, _)| n == phase)?;
                            let x = i as f64 + (k as f64 - (phases.len() - 1) as f64 / 2.0) * width;
                            Some(Bar::new(x, s).width(width).name(format!("#{}", run.id)))
                        })
                        .collect();
                    plot.bar_chart(BarChart::new(phase.clone(), bars).color(theme::rank_color(k + 4)));
                }
            });
    });
}
