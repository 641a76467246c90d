//! One frame of the studio: the panels draw the state, then the commands they queued go to the
//! engine; and the eframe `App` glue (logic, ui, settings persistence). Kept apart from `app.rs`
//! so the state does not depend on the panels that draw it.

use eframe::egui;

use super::app::{StudioApp, SETTINGS_KEY};
use super::panels;

impl StudioApp {
    /// Draws the whole studio, then sends what the panels queued.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        panels::layout(ui, self);
        self.flush_commands();
    }
}

impl eframe::App for StudioApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        StudioApp::logic(self, ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }
}
