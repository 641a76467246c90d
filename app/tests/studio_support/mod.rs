//! Shared set-up of the studio tests: a headless kittest harness around a real `StudioApp` (real
//! engine thread, real workers when a test runs one) with its data dir in a temporary folder.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use tessera_app::studio::engine::EngineOptions;
use tessera_app::studio::state::Settings;
use tessera_app::studio::StudioApp;

pub struct Studio {
    pub harness: Harness<'static, StudioApp>,
    pub data_dir: tempfile::TempDir,
}

/// A studio on `settings`, with a fresh data dir. `probe_devices`: run the device probe at start
/// (it starts `tessera-worker --doctor`).
pub fn studio(settings: Settings, probe_devices: bool) -> Studio {
    build(settings, EngineOptions { skip_device_probe: !probe_devices, ..EngineOptions::default() })
}

/// A studio whose workers are `worker_exe` (to test start-up failures).
pub fn studio_with_worker(settings: Settings, worker_exe: &std::path::Path) -> Studio {
    let options =
        EngineOptions { worker_exe: Some(worker_exe.into()), skip_device_probe: true, ..EngineOptions::default() };
    build(settings, options)
}

fn build(settings: Settings, options: EngineOptions) -> Studio {
    build_sized(settings, options, egui::vec2(1280.0, 900.0))
}

/// A studio with explicit engine options (its data dir is replaced by a fresh temporary one) in
/// a window of `size` points.
pub fn build_sized(settings: Settings, mut options: EngineOptions, size: egui::Vec2) -> Studio {
    let data_dir = tempfile::tempdir().unwrap();
    options.data_dir = Some(data_dir.path().to_path_buf());
    // The harness makes its own egui context; the engine's repaint requests go to this one, and
    // the tests step the harness themselves.
    let app = StudioApp::with_options(&egui::Context::default(), settings, options).unwrap();
    let harness = Harness::builder().with_size(size).build_ui_state(
        |ui, app: &mut StudioApp| {
            app.logic(ui.ctx());
            app.show(ui);
        },
        app,
    );
    Studio { harness, data_dir }
}

/// Steps the harness (with short sleeps, so the engine thread makes progress) until `done`
/// holds; panics with `what` and the app's messages after `timeout`.
pub fn step_until(
    harness: &mut Harness<'static, StudioApp>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&StudioApp) -> bool,
) {
    let start = Instant::now();
    while !done(harness.state()) {
        if start.elapsed() > timeout {
            let messages: Vec<String> = harness.state().messages.items.iter().map(|m| m.text.clone()).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; status {:?}; messages {messages:?}",
                harness.state().live.status
            );
        }
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.step();
}
