//! Dismissible messages (errors and notices) at the top of the window.

use eframe::egui;

use crate::studio::state::{Level, Messages};
use crate::studio::theme;

pub fn messages_ui(ui: &mut egui::Ui, messages: &mut Messages) {
    let mut dismissed = None;
    for m in &messages.items {
        let fill = match m.level {
            Level::Error => theme::ERROR_BG,
            Level::Info => theme::INFO_BG,
        };
        egui::Frame::new().fill(fill).inner_margin(6.0).corner_radius(4.0).show(ui, |ui| {
            ui.horizontal(|ui| {
                if ui.button("Dismiss").on_hover_text("Hide this message").clicked() {
                    dismissed = Some(m.id);
                }
                ui.add(egui::Label::new(egui::RichText::new(&m.text).color(egui::Color32::WHITE)).wrap());
            });
        });
    }
    if let Some(id) = dismissed {
        messages.dismiss(id);
    }
}
