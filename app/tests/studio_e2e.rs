//! The studio end to end, headless: the demo model runs through real `tessera-worker` processes
//! (built by `cargo build --workspace`; found like the CLI finds them), memory samples and VAE
//! pieces arrive, a piece's inspector opens, the video saves, the run is recorded for Compare.

mod studio_support;

use std::time::Duration;

use eframe::egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use studio_support::{step_until, studio, studio_with_worker};
use tessera_app::studio::state::{RunStatus, Settings, Tab};

/// The demo's own defaults (its demo.json: 64×64, 9 frames, 10 steps, CFG 3 with its prompt): two
/// halo slabs of 2 latent rows, 3 latent chunks.
fn demo_settings() -> Settings {
    Settings::default()
}

/// Pixels whose RGB differs by more than 60 (of 255) between two RGB8 frames.
fn changed_pixels(a: &[u8], b: &[u8]) -> usize {
    let d = |x: &[u8], y: &[u8]| (0..3).map(|i| (x[i] as f32 - y[i] as f32).powi(2)).sum::<f32>().sqrt();
    a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| d(x, y) > 60.0).count()
}

#[test]
fn demo_runs_end_to_end_on_two_worker_processes() {
    let mut s = studio(demo_settings(), true);
    let out_dir = s.data_dir.path().join("out");
    s.harness.state_mut().settings.output = out_dir.join("clip.mp4").display().to_string();
    let h = &mut s.harness;
    h.get_by_label("Generate").click();
    step_until(h, "the run to finish", Duration::from_secs(300), |app| {
        !app.live.status.is_busy() && app.live.status != RunStatus::Idle
    });
    let app = h.state();
    assert!(matches!(app.live.status, RunStatus::Finished { .. }), "{:?}", app.live.status);
    assert_eq!(app.live.world_size, 2);
    for rank in 0..2 {
        let samples = app.live.ranks[rank].memory.len();
        assert!(samples > 0, "no memory samples from rank {rank}");
        assert!(app.live.ranks[rank].memory.iter().any(|m| m.peak_bytes > 0), "rank {rank} reported no peak");
        assert!(!app.live.ranks[rank].phases.is_empty(), "rank {rank} reported no phases");
    }
    // The whole pipeline ran: the last progress report is the decode's, complete (3 latent chunks
    // for 9 frames); every denoising step is checked through its preview below.
    let steps = app.settings.steps;
    let p = &app.live.progress;
    assert_eq!((p.message.as_str(), p.step, p.total), ("decode", 3, 3), "{p:?}");
    let phases: Vec<&str> = app.live.ranks[0].phases.iter().map(|p| p.name.as_str()).collect();
    assert!(phases.contains(&"denoise") && phases.contains(&"decode"), "{phases:?}");
    // Halo mode: one slab per rank per latent chunk (3 chunks for 9 frames).
    let pieces = &app.live.pieces;
    assert_eq!(
        pieces.len(),
        6,
        "pieces: {:?}",
        pieces.iter().map(|p| (p.rank, p.piece.latent_chunk)).collect::<Vec<_>>()
    );
    let video = app.video.as_ref().expect("a decoded video");
    assert_eq!((video.frames.rgb.len(), video.frames.width, video.frames.height), (9, 64, 64));
    // The trained demo draws its prompt ("a red ball moving right on black"): the first and last
    // frames differ where the ball left and where it arrived (two discs of ~150 px each), and the
    // left half changes as much as the right (it is not noise that differs everywhere).
    let (first, last) = (&video.frames.rgb[0], &video.frames.rgb[8]);
    let changed = changed_pixels(first, last);
    println!("first vs last frame: {changed} of {} pixels changed", 64 * 64);
    assert!((150..1200).contains(&changed), "{changed} pixels changed between the first and last frame");
    // A denoise preview after every step; the Live view shows the latest (4×4: the demo's
    // 16×-spatial latent grid of 64×64).
    assert_eq!(app.live.denoise_previews, steps);
    let preview = app.live.denoise_preview.as_ref().expect("a denoise preview");
    assert_eq!((preview.step, preview.total, preview.preview.width, preview.preview.height), (steps, steps, 4, 4));
    h.get_by_label(&format!("Denoise preview after step {steps}/{steps} (latent to RGB, 4×4)"));

    // The mosaic shows the latest chunk; go back to chunk 0 and inspect the first piece.
    let first_rank = pieces[0].rank;
    assert_eq!(pieces[0].piece.latent_chunk, Some(0));
    assert!(h.query_by_label(&format!("Piece 1 (rank {first_rank})")).is_none());
    h.get_by_role_and_label(Role::Slider, "Latent chunk").set_value_accesskit(0.0);
    h.run_steps(2);
    h.get_by_label(&format!("Piece 1 (rank {first_rank})")).click();
    h.run_steps(2);
    assert_eq!(h.state().view.inspected_piece, Some(0));
    h.get_by_label("Piece 1 inspector");
    h.get_by_label("Bytes sent");

    // Result: save an MP4.
    h.get_by_label("Result").click();
    h.run_steps(2);
    h.get_by_label("9 frames, 64×64, 24 fps");
    h.get_by_label("Save MP4").click();
    step_until(h, "the MP4 to be saved", Duration::from_secs(60), |app| {
        app.messages.items.iter().any(|m| m.text.starts_with("Saved") || m.text.starts_with("Save failed"))
    });
    let mp4 = out_dir.join("clip.mp4");
    assert!(mp4.is_file() && std::fs::metadata(&mp4).unwrap().len() > 0, "{:?}", h.state().messages.items);
    // The saved MP4 carries the run's settings, which restore the form.
    let stored = tessera_engine::api::Settings::read(&mp4).expect("settings in the saved MP4");
    assert_eq!((stored.params.width, stored.params.height, stored.params.steps), (64, 64, steps));
    let mut restored = Settings { steps: 30, width: 512, use_demo: false, ..Settings::default() };
    let demo = tessera_app::studio::demo::folder().unwrap();
    tessera_app::studio::load_settings::apply(&stored, &mut restored, Some(&demo));
    assert!(restored.use_demo, "a demo run restores the demo model");
    assert_eq!((restored.width, restored.height, restored.steps), (64, 64, steps));

    // Compare: the run is recorded and persisted.
    h.get_by_label("Compare").click();
    h.run_steps(2);
    assert_eq!(h.state().view.tab, Tab::Compare);
    h.get_by_label_contains("#1 demo 64×64×9, 2 ranks (halo)");
    let saved = std::fs::read_to_string(s.data_dir.path().join("runs.json")).unwrap();
    assert!(saved.contains("\"wall_seconds\""), "{saved}");

    // A second run (same world), then diff the two.
    h.get_by_label("Generate").click();

    step_until(h, "the second run", Duration::from_secs(300), |app| app.runs.runs.len() == 2);
    for title in ["#1 demo 64×64×9, 2 ranks (halo)", "#2 demo 64×64×9, 2 ranks (halo)"] {
        h.get_by_role_and_label(Role::CheckBox, title).click();
        h.run_steps(2);
    }
    assert_eq!(h.state().view.compare_selected, [1, 2]);
    h.get_by_label("#1 demo 64×64×9, 2 ranks (halo)  ->  #2 demo 64×64×9, 2 ranks (halo)");
    h.get_by_label_contains("denoise: ");
}

#[test]
fn a_run_can_be_cancelled_and_the_next_one_runs() {
    // Many steps, so the run is still denoising when Cancel is pressed.
    let mut s = studio(Settings { steps: 400, ..demo_settings() }, false);
    let h = &mut s.harness;
    h.get_by_label("Generate").click();
    step_until(h, "the first denoising step", Duration::from_secs(300), |app| {
        app.live.progress.message == "denoise" && app.live.progress.step >= 1
    });
    h.get_by_label("Cancel").click();
    step_until(h, "the cancel", Duration::from_secs(120), |app| !app.live.status.is_busy());
    let app = h.state();
    assert_eq!(app.live.status, RunStatus::Cancelled, "{:?}", app.messages.items);
    assert!(app.live.progress.step < 400, "stopped early: step {}", app.live.progress.step);
    assert!(app.messages.items.iter().any(|m| m.text.starts_with("Run cancelled")));
    assert!(app.video.is_none());
    // The workers stay up: the next run (2 steps) finishes on the same world.
    h.state_mut().settings.steps = 2;
    h.run_steps(1);
    h.get_by_label("Generate").click();
    step_until(h, "the second run", Duration::from_secs(300), |app| {
        !app.live.status.is_busy() && app.live.status != RunStatus::Cancelled
    });
    assert!(matches!(h.state().live.status, RunStatus::Finished { .. }), "{:?}", h.state().messages.items);
}

#[test]
fn a_worker_that_cannot_start_is_reported_with_its_rank() {
    // `false` exits at once: the handshake names the rank that died, the app stays usable.
    let mut s = studio_with_worker(demo_settings(), std::path::Path::new("/bin/false"));
    let h = &mut s.harness;
    h.get_by_label("Generate").click();
    step_until(h, "the failure", Duration::from_secs(120), |app| matches!(app.live.status, RunStatus::Failed(_)));
    let text = h.state().messages.items[0].text.clone();
    assert!(text.starts_with("The workers did not start: rank ") && text.contains("exit"), "{text}");
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    assert!(h.state().messages.items.is_empty());
    assert!(h.query_by_label("Generate").is_some());
}
