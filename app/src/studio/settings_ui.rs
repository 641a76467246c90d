//! Small form helpers: every field has a visible label that is also its accessible name (screen
//! readers and the kittest tests find fields by it).

use eframe::egui;

/// A labelled widget as one row of a two-column `Grid`.
pub fn field(ui: &mut egui::Ui, label: &str, widget: impl egui::Widget) -> egui::Response {
    let label = ui.label(label);
    let response = ui.add(widget).labelled_by(label.id);
    ui.end_row();
    response
}

/// A labelled text field (multi-line for prompts).
pub fn labelled_text(ui: &mut egui::Ui, label: &str, text: &mut String, multiline: bool) -> egui::Response {
    let label = ui.label(label);
    let edit = if multiline {
        egui::TextEdit::multiline(text).desired_rows(2).desired_width(f32::INFINITY)
    } else {
        egui::TextEdit::singleline(text).desired_width(f32::INFINITY)
    };
    ui.add(edit).labelled_by(label.id)
}
