//! Setup panel: model folder (or the demo), prompts, input image, size, frames, schedule, seed and
//! output path. Problems show inline (red) as soon as they are known.

use eframe::egui;
use tessera_engine::api::{Family, RequestError, SchedulerKind};

use crate::studio::app::{StudioApp, LOADING};
use crate::studio::browse::Target;
use crate::studio::panels::model_files;
use crate::studio::settings_ui::{field, labelled_text};
use crate::studio::state::Settings;
use crate::studio::{demo, theme};

/// Common sizes (width × height); all multiples of 32, so valid for every Wan model.
pub const RESOLUTIONS: &[(&str, usize, usize)] = &[
    ("Demo 256×192", 256, 192),
    ("Square 512×512", 512, 512),
    ("480p 832×480", 832, 480),
    ("720p 1280×704", 1280, 704),
    ("Portrait 480×832", 480, 832),
];

/// HunyuanVideo 1.5's sizes: its 480p and 720p buckets (multiples of 16, the VAE's 16× with
/// patch 1), square and portrait.
pub const HV15_RESOLUTIONS: &[(&str, usize, usize)] = &[
    ("480p 848×480", 848, 480),
    ("720p 1280×720", 1280, 720),
    ("Square 512×512", 512, 512),
    ("Square 720×720", 720, 720),
    ("Portrait 480×848", 480, 848),
];

/// The sizes offered for the model in the form (Wan's until a model is read).
pub fn resolutions(family: Option<Family>) -> &'static [(&'static str, usize, usize)] {
    match family {
        Some(Family::HunyuanVideo15) => HV15_RESOLUTIONS,
        _ => RESOLUTIONS,
    }
}

/// What the sizes must be, for the model's family (shown under the size fields for HunyuanVideo
/// 1.5, whose rules differ from the Wan2.2 default the form starts with).
pub fn size_rule(family: Family, multiple: usize) -> String {
    match family {
        Family::HunyuanVideo15 => format!(
            "HunyuanVideo 1.5: width and height multiples of {multiple}, frames 4k+1 (121 frames = 5 s at 24 fps)"
        ),
        Family::Wan => format!("Wan: width and height multiples of {multiple}, frames 4k+1"),
    }
}

/// The generation parameters of the settings.
pub fn setup_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    if ui
        .button("Load settings from file…")
        .on_hover_text("Restore the settings of a run from an MP4 or PNG Tessera wrote")
        .clicked()
    {
        app.background.pick(Target::SettingsFile, ui.ctx());
    }
    model_ui(ui, app);
    ui.separator();
    let s = &mut app.settings;
    labelled_text(ui, "Prompt", &mut s.prompt, true);
    labelled_text(ui, "Negative prompt", &mut s.negative_prompt, true);
    image_ui(ui, app);
    ui.separator();
    size_ui(ui, app);
    ui.separator();
    schedule_ui(ui, app);
    ui.separator();
    ui.horizontal(|ui| {
        let label = ui.label("Output");
        ui.add(egui::TextEdit::singleline(&mut app.settings.output).desired_width(180.0)).labelled_by(label.id);
        if ui.button("Browse…").on_hover_text("Choose where Save writes").clicked() {
            app.background.pick(Target::Output, ui.ctx());
        }
    });
}

fn model_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    ui.checkbox(&mut app.settings.use_demo, "Demo model (2 CPU virtual devices)");
    if app.settings.use_demo {
        ui.colored_label(theme::NOTE, demo::note());
    } else {
        ui.horizontal(|ui| {
            let label = ui.label("Model folder");
            ui.add(egui::TextEdit::singleline(&mut app.settings.model_dir).desired_width(170.0)).labelled_by(label.id);
            if ui.button("Browse…").on_hover_text("Pick a diffusers Wan pipeline folder").clicked() {
                app.background.pick(Target::ModelFolder, ui.ctx());
            }
        });
        model_files::model_files_ui(ui, &mut app.settings.files, &app.background);
    }
    match &app.model.info {
        Some(Ok(info)) => {
            ui.label(info.describe());
            model_files::detection_ui(ui, info);
            ui.label(format!(
                "{} of {} weights{}",
                theme::bytes(info.weights.as_ref().map(|w| w.bytes).unwrap_or(0)),
                info.weights.as_ref().map(|w| w.dtype.as_str()).unwrap_or("no weights"),
                if info.can_encode_text() { ", text encoder present" } else { "" }
            ));
        }
        Some(Err(_)) if app.settings.use_demo => {
            ui.label("The demo model is written to the data folder at the first Generate.");
        }
        Some(Err(e)) => {
            ui.colored_label(theme::BAD, e);
        }
        None if app.model.path.as_os_str().is_empty() => {}
        None => {
            ui.label("Reading the model folder…");
        }
    }
}

fn image_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let wants_image = matches!(&app.model.info, Some(Ok(i)) if i.accepts_image());
    ui.horizontal(|ui| {
        let label = ui.label("Input image");
        ui.add(
            egui::TextEdit::singleline(&mut app.settings.image).desired_width(170.0).hint_text("none (text-to-video)"),
        )
        .labelled_by(label.id);
        if ui.button("Browse…").on_hover_text("PNG or JPEG for image-to-video").clicked() {
            app.background.pick(Target::Image, ui.ctx());
        }
    });
    if !wants_image && !app.settings.image.trim().is_empty() {
        ui.colored_label(theme::NOTE, "This model takes no input image; it will be ignored.");
    }
    match &app.thumbnail {
        Some((_, Ok(texture))) => {
            ui.image((texture.id(), texture.size_vec2()));
        }
        Some((_, Err(e))) if e == LOADING => {
            ui.weak("Loading the thumbnail…");
        }
        Some((path, Err(e))) => {
            ui.colored_label(theme::BAD, format!("cannot read {}: {e}", path.display()));
        }
        None => {}
    }
}

fn size_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let family = match &app.model.info {
        Some(Ok(info)) if !app.settings.use_demo => Some(info.family),
        _ => None,
    };
    let sizes = resolutions(family);
    let s = &mut app.settings;
    let current = sizes.iter().find(|(_, w, h)| *w == s.width && *h == s.height).map(|r| r.0).unwrap_or("Custom");
    ui.horizontal(|ui| {
        let label = ui.label("Resolution");
        egui::ComboBox::from_id_salt("resolution")
            .selected_text(current)
            .show_ui(ui, |ui| {
                for &(name, w, h) in sizes {
                    if ui.selectable_label(current == name, name).clicked() {
                        s.width = w;
                        s.height = h;
                    }
                }
            })
            .response
            .labelled_by(label.id);
    });
    egui::Grid::new("size-grid").num_columns(2).show(ui, |ui| {
        field(ui, "Width", egui::DragValue::new(&mut s.width).range(16..=4096).speed(16));
        field(ui, "Height", egui::DragValue::new(&mut s.height).range(16..=4096).speed(16));
        field(ui, "Frames", egui::DragValue::new(&mut s.frames).range(1..=257).speed(4));
    });
    let multiple = match &app.model.info {
        Some(Ok(info)) => info.size_multiple(),
        // The demo (and every Wan2.2 model) uses 32 until the folder is read.
        _ => 32,
    };
    if family == Some(Family::HunyuanVideo15) {
        ui.weak(size_rule(Family::HunyuanVideo15, multiple));
    }
    if let Err(e) = s.params().validate(multiple) {
        ui.colored_label(theme::BAD, RequestError::from(e).to_string());
        if ui
            .button("Snap to valid")
            .on_hover_text("Round width and height to the model's multiple, frames to 4k+1")
            .clicked()
        {
            snap(s, multiple);
        }
    }
}

/// Rounds the size to the nearest valid values.
pub fn snap(s: &mut Settings, multiple: usize) {
    let round = |v: usize| ((v + multiple / 2) / multiple).max(1) * multiple;
    s.width = round(s.width);
    s.height = round(s.height);
    s.frames = (s.frames.saturating_sub(1) + 2) / 4 * 4 + 1;
}

fn schedule_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let two_experts = matches!(&app.model.info, Some(Ok(i)) if i.two_experts());
    let s = &mut app.settings;
    egui::Grid::new("schedule-grid").num_columns(2).show(ui, |ui| {
        field(ui, "Steps", egui::DragValue::new(&mut s.steps).range(1..=200));
        field(ui, "Guidance", egui::DragValue::new(&mut s.guidance).range(0.0..=20.0).speed(0.1));
        if two_experts {
            field(ui, "Guidance 2", egui::DragValue::new(&mut s.guidance_2).range(0.0..=20.0).speed(0.1));
        }
        let label = ui.label("Shift");
        ui.horizontal(|ui| {
            let mut custom = s.shift.is_some();
            if ui.checkbox(&mut custom, "override").labelled_by(label.id).changed() {
                s.shift = custom.then_some(5.0);
            }
            if let Some(shift) = &mut s.shift {
                ui.add(egui::DragValue::new(shift).range(0.1..=20.0).speed(0.1)).labelled_by(label.id);
            }
        });
        ui.end_row();
        let label = ui.label("Scheduler");
        let name = |k: Option<SchedulerKind>| k.map_or("model's", SchedulerKind::name);
        egui::ComboBox::from_id_salt("scheduler")
            .selected_text(name(s.scheduler))
            .show_ui(ui, |ui| {
                for k in [None, Some(SchedulerKind::UniPc), Some(SchedulerKind::Euler)] {
                    ui.selectable_value(&mut s.scheduler, k, name(k));
                }
            })
            .response
            .labelled_by(label.id);
        ui.end_row();
        let label = ui.label("Sigmas");
        ui.horizontal(|ui| {
            let mut custom = s.sigmas.is_some();
            if ui.checkbox(&mut custom, "custom").labelled_by(label.id).changed() {
                // The distilled 4-step schedule is the one people type.
                s.sigmas = custom.then(|| vec![1.0, 0.75, 0.5, 0.25]);
                if custom {
                    s.steps = 4;
                }
            }
            if let Some(sigmas) = &mut s.sigmas {
                let mut text = sigmas.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
                let edit = ui.add(egui::TextEdit::singleline(&mut text).desired_width(140.0));
                if edit.changed() {
                    if let Ok(parsed) = text.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>()
                    {
                        *sigmas = parsed;
                        s.steps = sigmas.len().max(1);
                    }
                }
                edit.on_hover_text("One sigma per step, before the shift (sets Steps)");
            }
        });
        ui.end_row();
        let label = ui.label("Seed");
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut s.seed)).labelled_by(label.id);
            if ui.button("Random").on_hover_text("Roll a new seed").clicked() {
                s.seed = rand_seed();
            }
        });
        ui.end_row();
    });
}

/// A seed from the clock (no RNG dependency needed for one number).
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // SplitMix64 finaliser: nearby clock values give unrelated seeds.
    let mut z = nanos as u64 ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapping_gives_valid_params() {
        let mut s = Settings { width: 250, height: 200, frames: 10, ..Settings::default() };
        snap(&mut s, 32);
        assert_eq!((s.width, s.height, s.frames), (256, 192, 9));
        assert!(s.params().validate(32).is_ok());
        for &(_, w, h) in RESOLUTIONS {
            assert!(Settings { width: w, height: h, ..Settings::default() }.params().validate(32).is_ok());
        }
    }

    /// Every offered size is valid for its family (Wan2.2: multiples of 32; HV1.5: of 16), at the
    /// 121 frames both families' presets use.
    #[test]
    fn offered_sizes_are_valid_for_the_family() {
        for (family, multiple) in [(None, 32), (Some(Family::Wan), 32), (Some(Family::HunyuanVideo15), 16)] {
            for &(name, w, h) in resolutions(family) {
                let s = Settings { width: w, height: h, frames: 121, ..Settings::default() };
                assert!(s.params().validate(multiple).is_ok(), "{family:?} {name}");
            }
        }
        // 848×480 is HV1.5's 480p bucket: valid there, not for the Wan2.2 VAE (multiples of 32).
        let s = Settings { width: 848, height: 480, frames: 121, ..Settings::default() };
        assert!(s.params().validate(16).is_ok() && s.params().validate(32).is_err());
        let mut odd = Settings { width: 850, height: 470, frames: 120, ..Settings::default() };
        snap(&mut odd, 16);
        assert_eq!((odd.width, odd.height, odd.frames), (848, 464, 121));
        assert!(size_rule(Family::HunyuanVideo15, 16).contains("multiples of 16"));
    }
}
