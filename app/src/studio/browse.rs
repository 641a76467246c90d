//! File pickers and thumbnails off the UI thread: "Browse…" opens the system dialog (rfd, via the
//! XDG desktop portal) on a helper thread, and input-image thumbnails are decoded on one too. Results
//! come back on a channel that `StudioApp::logic` drains.

use std::path::PathBuf;

use crossbeam_channel::{unbounded, Receiver, Sender};
use eframe::egui;

/// Which field a picked path goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    ModelFolder,
    Image,
    Output,
    /// An MP4 or PNG whose settings are loaded (read on the browse thread: the file may be large).
    SettingsFile,
    /// A component file or LoRA of the model (`panels::model_files`).
    File(FileSlot),
}

/// A finished background request.
pub enum Done {
    Picked(Target, PathBuf),
    /// The settings stored in a picked MP4/PNG, or why they could not be read.
    Settings(PathBuf, Result<Box<tessera_engine::api::Settings>, String>),
    /// A thumbnail for `path`, or why it could not be read.
    Thumbnail(PathBuf, Result<egui::ColorImage, String>),
}

pub struct Background {
    tx: Sender<Done>,
    rx: Receiver<Done>,
}

impl Default for Background {
    fn default() -> Self {
        // Few items, produced at the user's pace.
        let (tx, rx) = unbounded();
        Self { tx, rx }
    }
}

/// Longest side of an input-image thumbnail, in pixels.
const THUMBNAIL_PX: u32 = 160;

impl Background {
    /// Opens a picker for `target`; a cancelled dialog sends nothing.
    pub fn pick(&self, target: Target, ctx: &egui::Context) {
        let (tx, ctx) = (self.tx.clone(), ctx.clone());
        let spawned = std::thread::Builder::new().name("studio-browse".into()).spawn(move || {
            let dialog = rfd::FileDialog::new();
            let picked = match target {
                Target::ModelFolder => dialog.set_title("Model folder").pick_folder(),
                Target::Image => dialog.add_filter("Images", &["png", "jpg", "jpeg"]).pick_file(),
                Target::Output => dialog.add_filter("Video", &["mp4", "safetensors"]).save_file(),
                Target::SettingsFile => dialog.add_filter("Tessera output", &["mp4", "png"]).pick_file(),
                Target::File(_) => dialog.set_title("Model file").pick_file(),
            };
            if let Some(path) = picked {
                let done = match target {
                    Target::SettingsFile => {
                        let read = tessera_engine::api::Settings::read(&path).map(Box::new).map_err(|e| e.to_string());
                        Done::Settings(path, read)
                    }
                    _ => Done::Picked(target, path),
                };
                tx.send(done).ok();
                ctx.request_repaint();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot open the file dialog: {e}");
        }
    }

    /// Decodes `path` into a small thumbnail.
    pub fn thumbnail(&self, path: PathBuf, ctx: &egui::Context) {
        let (tx, ctx) = (self.tx.clone(), ctx.clone());
        let spawned = std::thread::Builder::new().name("studio-thumbnail".into()).spawn(move || {
            let result = image::open(&path).map_err(|e| e.to_string()).map(|img| {
                let small = img.thumbnail(THUMBNAIL_PX, THUMBNAIL_PX).to_rgb8();
                egui::ColorImage::from_rgb([small.width() as usize, small.height() as usize], small.as_raw())
            });
            tx.send(Done::Thumbnail(path, result)).ok();
            ctx.request_repaint();
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the thumbnail thread: {e}");
        }
    }

    pub fn try_recv(&self) -> Option<Done> {
        self.rx.try_recv().ok()
    }
}

/// A file field of `ModelFiles` (the target of a "Browse…").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSlot {
    Transformer,
    Transformer2,
    Vae,
    TextEncoder,
    Tokenizer,
    Config,
    /// The file of LoRA `i` of the list.
    Lora(usize),
}
