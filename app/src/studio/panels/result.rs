//! Result: play or scrub the decoded video, save it as MP4, PNG frames or safetensors.

use std::path::{Path, PathBuf};

use eframe::egui;

use crate::studio::app::StudioApp;
use crate::studio::engine::Command;
use crate::studio::{demo, theme};

/// The three save targets derived from the output path: `x.mp4`, `x-frames/`, `x.safetensors`.
pub fn save_targets(output: &str) -> [(&'static str, PathBuf); 3] {
    let path = Path::new(output.trim());
    let stem = path.with_extension("");
    let stem = stem.to_string_lossy();
    [
        ("Save MP4", PathBuf::from(format!("{stem}.mp4"))),
        ("Save PNG frames", PathBuf::from(format!("{stem}-frames/"))),
        ("Save safetensors", PathBuf::from(format!("{stem}.safetensors"))),
    ]
}

pub fn result_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let Some(video) = app.video.clone() else {
        ui.label("No video yet: press Generate.");
        return;
    };
    if app.settings.use_demo {
        ui.colored_label(theme::NOTE, demo::note());
    }
    let n = video.frames.rgb.len();
    ui.label(format!("{n} frames, {}×{}, {} fps", video.frames.width, video.frames.height, video.fps));
    ui.horizontal(|ui| {
        let label = if app.view.playing { "Pause" } else { "Play" };
        if ui.button(label).clicked() {
            app.view.playing = !app.view.playing;
        }
        let label = ui.label("Frame");
        let mut frame = app.view.frame.min(n.saturating_sub(1));
        if ui.add(egui::Slider::new(&mut frame, 0..=n.saturating_sub(1))).labelled_by(label.id).changed() {
            app.view.playing = false;
        }
        app.view.frame = frame;
    });
    if app.view.playing && n > 0 {
        app.view.play_clock += ui.input(|i| i.stable_dt) as f64;
        let per_frame = 1.0 / video.fps.max(1.0);
        while app.view.play_clock >= per_frame {
            app.view.play_clock -= per_frame;
            app.view.frame = (app.view.frame + 1) % n;
        }
        ui.ctx().request_repaint_after(std::time::Duration::from_secs_f64(per_frame));
    }
    if let Some(texture) = app.frame_texture(ui.ctx(), app.view.frame) {
        let size = texture.size_vec2();
        let scale = (ui.available_width() / size.x).min(420.0 / size.y).max(0.1);
        ui.image((texture.id(), size * scale));
    }
    ui.horizontal(|ui| {
        for (label, path) in save_targets(&app.settings.output) {
            if ui.button(label).on_hover_text(path.display().to_string()).clicked() {
                app.outbox.push(Command::Save(path, video.clone()));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_follow_the_output_name() {
        let t = super::save_targets("out/clip.mp4");
        assert_eq!(
            t.map(|(_, p)| p.display().to_string()),
            ["out/clip.mp4", "out/clip-frames/", "out/clip.safetensors"]
        );
    }
}
