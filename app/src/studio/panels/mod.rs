//! The studio's panels. Each is a `*_ui` function that draws from the app's plain state and edits
//! the settings or queues commands; none of them talks to the engine or blocks.
//!
//! Layout: messages on top; Setup and Parallel in the left side panel; Live (memory, progress,
//! decode mosaic), Result and Compare as pages of the central panel.

pub mod compare;
pub mod live;
pub mod messages;
pub mod model_files;
pub mod mosaic;
pub mod parallel;
pub mod result;
pub mod setup;

use eframe::egui;

use super::app::StudioApp;
use super::state::Tab;

pub fn layout(ui: &mut egui::Ui, app: &mut StudioApp) {
    egui::Panel::top("studio-top").show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.heading("Tessera studio");
            ui.separator();
            parallel::run_buttons_ui(ui, app);
            ui.separator();
            for tab in [Tab::Live, Tab::Result, Tab::Compare] {
                if ui.selectable_label(app.view.tab == tab, tab.label()).clicked() {
                    app.view.tab = tab;
                }
            }
        });
        messages::messages_ui(ui, &mut app.messages);
    });
    egui::Panel::left("studio-setup").default_size(340.0).resizable(true).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            egui::CollapsingHeader::new("Setup").default_open(true).show(ui, |ui| setup::setup_ui(ui, app));
            egui::CollapsingHeader::new("Parallel").default_open(true).show(ui, |ui| parallel::parallel_ui(ui, app));
        });
    });
    egui::CentralPanel::default().show(ui, |ui| match app.view.tab {
        Tab::Live => live::live_ui(ui, app),
        Tab::Result => result::result_ui(ui, app),
        Tab::Compare => compare::compare_ui(ui, app),
    });
    mosaic::inspector_window(ui.ctx(), app);
}
