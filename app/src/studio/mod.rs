//! The studio: an eframe app to set up a generation, choose the parallel plan, and watch every
//! device work (memory over time, progress, VAE pieces as they decode), then compare runs.
//!
//! - `app.rs`: [`StudioApp`]: the state and `logic` (engine events in); `frame.rs`: drawing one
//!   frame with the panels and the eframe `App` glue.
//! - `state.rs`: plain structs (settings, the live run, messages, what is on screen).
//! - `engine/`: the threads that own the engine's `Session` (runs) and do the slow helper work;
//!   commands down, events up.
//! - `panels/`: Setup, Parallel, Live, Mosaic (+ inspector), Result, Compare, messages.
//! - `demo.rs`: the built-in demo model;
//!   `records.rs`: the persisted run history; `presets.rs`: preset files; `browse.rs`: file pickers and thumbnails;
//!   `load_settings.rs`: a run's settings from an MP4/PNG back into the form;
//!   `theme.rs`: colours; `settings_ui.rs`: labelled form fields.
//!
//! Failure handling: a bad request (size, plan, model folder) is refused before anything starts,
//! with the nearest valid values; a worker failure (exit, OOM, error) stops that world and shows a
//! dismissible message naming the rank; the next Generate starts fresh workers.

pub mod app;
pub mod browse;
pub mod demo;
pub mod engine;
mod frame;
pub mod load_settings;
pub mod panels;
pub mod presets;
pub mod records;
pub mod settings_ui;
pub mod state;
pub mod theme;

pub use app::StudioApp;

/// Opens the studio window (what `tessera` with no arguments does), rendered through wgpu: Vulkan
/// where there is a driver (NVIDIA, Mesa, lavapipe), else GL through wgpu's GLES backend
/// (`WGPU_BACKEND=gl` forces it).
///
/// The first start opens maximized, using the screen; eframe then remembers the window's size,
/// position and maximized state (its persistence), and later starts restore them.
pub fn run() -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("Tessera studio")
            // The size when un-maximized (clamped to the monitor by eframe).
            .with_inner_size([1600.0, 1000.0])
            .with_min_inner_size([900.0, 600.0])
            .with_maximized(true),
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native(
        "Tessera studio",
        options,
        Box::new(|cc| Ok(Box::new(StudioApp::new(cc)?) as Box<dyn eframe::App>)),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the studio window: {e}"))
}
