//! Image snapshots of every studio panel, rendered through wgpu (headless: no window or X server;
//! Mesa's lavapipe on CI, the GPU's Vulkan driver elsewhere) and compared with the PNGs in
//! `assets/screenshots/`, which README shows. Regenerate them all after a UI change with:
//!
//! ```text
//! UPDATE_SNAPSHOTS=1 cargo test -p tessera_app --test studio_snapshots
//! ```
//!
//! (a failing run also leaves `NAME.new.png` and `NAME.diff.png` beside each snapshot; both are
//! git-ignored).
//!
//! One test, one process, two real demo runs on two `tessera-worker` processes (tiles, then halo):
//! the pictures (denoise preview, decoded tiles, frames) and the structure (phases, pieces, ranks)
//! come from those runs. What varies from run to run — wall-clock times and heap sizes — is then
//! replaced by a fixed timeline ([`pin`]), and the device report by a fixed machine
//! ([`pinned_devices`]), so the images are the same on every machine. "Live during denoise" and
//! "during decode" are the pinned run cut at a moment of that timeline ([`cut`]).
//!
//! Threshold: egui tessellates and anti-aliases (feathers) every shape on the CPU and rasterises
//! its text into an atlas on the CPU too, so drivers differ only in how the GPU covers triangle
//! edges and filters the scaled-up textures: single pixels on edges, not regions. A pixel fails
//! when its YIQ distance exceeds egui's default 0.6 (a 1/255 step in a channel passes, a visible
//! colour change fails), and a snapshot fails above [`MAX_FAILED_PIXELS`] such pixels, 0.05% of the
//! image (a changed label or colour changes hundreds to thousands). Measured: Mesa's Vulkan
//! (lavapipe) and GL (llvmpipe, `WGPU_BACKEND=gl`) draw these frames with 0 pixels over 0.6; NVIDIA
//! hardware rasterises edges with other coverage rules, hence the allowance (Rerun's kittest suite
//! allows 0.04% for the same reason).

mod studio_support;

use std::time::Duration;

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use studio_support::{build_sized, step_until};
use tessera_app::studio::engine::EngineOptions;
use tessera_app::studio::state::{LiveRun, MemoryPoint, PhaseBand, Progress, RunStatus, Settings};
use tessera_app::studio::StudioApp;
use tessera_engine::api::devices::{CpuReport, DoctorReport, GpuReport, NvmlReport, WorkerProbe, WorkerReport};
use tessera_engine::api::{ParallelPlan, TilingSpec, VaeMode};

/// The window of every snapshot, in points at 1 pixel per point: a laptop-sized window, small
/// enough that the nine PNGs stay under 1.5 MiB together.
const SIZE: egui::Vec2 = egui::vec2(1024.0, 640.0);

/// 0.05% of the 1024×640 pixels (see the module doc).
const MAX_FAILED_PIXELS: usize = 328;

/// Where the snapshots live, relative to this crate (cargo runs tests in the crate's folder).
const OUTPUT: &str = "../assets/screenshots";

/// A model folder from the test fixtures (the A14B two-expert layout), named relative to the crate
/// so the path shown in the form is the same on every machine.
const MODEL_FOLDER: &str = "../tests/fixtures/golden/a14b_t2v";

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The demo at its own defaults (demo.json: 64×64, 9 frames, its example prompt), decoded in
/// 48-pixel tiles with a 32-pixel stride over both ranks (4 tiles per latent chunk, both rank colours).
fn tiles_settings() -> Settings {
    let tiling = TilingSpec { tile_height: 48, tile_width: 48, stride_height: 32, stride_width: 32 };
    Settings {
        plan: ParallelPlan {
            ranks: 2,
            ulysses: 2,
            vae_parallel: 2,
            vae_mode: VaeMode::Tiles,
            vae_tiling: Some(tiling),
            ..ParallelPlan::default()
        },
        ..Settings::default()
    }
}

#[test]
fn every_panel_matches_its_snapshot() {
    let options = SnapshotOptions::new().threshold(0.6).max_failed_pixels(MAX_FAILED_PIXELS).output_path(OUTPUT);
    let engine = EngineOptions { skip_device_probe: true, ..EngineOptions::default() };
    let mut s = build_sized(tiles_settings(), engine, SIZE);
    let h = &mut s.harness;
    h.state_mut().devices = Some(pinned_devices(false));

    // Setup with the demo, before its first run.
    settle(h);
    shot(h, "studio-setup-demo", &options);

    // A real tiles run to the end.
    h.get_by_label("Generate").click();
    step_until(h, "the tiles run", Duration::from_secs(600), |app| {
        !app.live.status.is_busy() && app.live.status != RunStatus::Idle
    });
    assert!(matches!(h.state().live.status, RunStatus::Finished { .. }), "{:?}", h.state().messages.items);
    let run = pin(&h.state().live);
    println!(
        "tiles run: {} pieces, phases {:?}",
        run.pieces.len(),
        run.ranks[0].phases.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    assert!(run.pieces.len() >= 4, "tiles over both ranks: {} pieces", run.pieces.len());

    show(h, cut(&run, Moment::Denoise));
    settle(h);
    shot(h, "studio-live-denoise", &options);
    show(h, cut(&run, Moment::Decode));
    settle(h);
    shot(h, "studio-live-decode", &options);

    // The finished run; inspect its last tile. The piece is opened through the view state: on the
    // 64-px demo frame the accessibility click on a mosaic piece does not reach it (the click path
    // is not what this snapshot is about).
    show(h, run.clone());
    settle(h);
    let last = run.pieces.len() - 1;
    assert!(h.query_by_label(&format!("Piece {} (rank {})", last + 1, run.pieces[last].rank)).is_some());
    h.state_mut().view.inspected_piece = Some(last);
    settle(h);
    shot(h, "studio-tile-inspector", &options);
    h.state_mut().view.inspected_piece = None;

    h.get_by_label("Result").click();
    settle(h);
    shot(h, "studio-result", &options);

    // A second run with the halo plan, then both in Compare.
    h.state_mut().settings.plan =
        ParallelPlan { ranks: 2, ulysses: 2, vae_parallel: 2, vae_mode: VaeMode::Halo, ..ParallelPlan::default() };
    h.run_steps(1);
    h.get_by_label("Generate").click();
    step_until(h, "the halo run", Duration::from_secs(600), |app| app.runs.runs.len() == 2);
    pin_records(h.state_mut());
    let halo = pin(&h.state().live);
    show(h, halo);
    h.get_by_label("Compare").click();
    settle(h);
    for run in h.state().runs.runs.iter().map(|r| r.title()).collect::<Vec<_>>() {
        h.get_by_role_and_label(Role::CheckBox, &run).click();
        h.run_steps(2);
    }
    assert_eq!(h.state().view.compare_selected, [1, 2]);
    settle(h);
    shot(h, "studio-compare", &options);

    // A model folder on a machine with four GPUs: Setup, then Parallel with a preset picked (Setup
    // folded away so Parallel and its per-device bars fill the side panel).
    h.state_mut().devices = Some(pinned_devices(true));
    h.get_by_role_and_label(Role::CheckBox, "Demo model (2 CPU virtual devices)").click();
    h.run_steps(1);
    h.get_by_role_and_label(Role::TextInput, "Model folder").set_text_value_accesskit(MODEL_FOLDER);
    h.get_by_label("Live").click();
    step_until(h, "the model folder's description", Duration::from_secs(60), |app| {
        matches!(app.model.info, Some(Ok(_)))
    });
    settle(h);
    shot(h, "studio-setup-model-folder", &options);
    step_until(h, "the presets", Duration::from_secs(30), |app| !app.presets.is_empty());
    // Picked as the Preset box does (its list is longer than this window; clicking through it is
    // covered by studio_form.rs).
    let app = h.state_mut();
    let preset = app.presets.iter().find(|p| p.name == "t2v-a14b-720p-4x4090").expect("the preset").clone();
    tessera_app::studio::presets::apply(&preset, &mut app.settings);
    h.run_steps(1);
    h.get_by_label("Setup").click();
    settle(h);
    assert_eq!(h.state().settings.plan.ranks, 4);
    // The side panel scrolled down to the last device's row and bars.
    h.get_by_label("rank 3 — GPU 3: NVIDIA GeForce RTX 4090, 23.99 GiB").scroll_to_me();
    settle(h);
    shot(h, "studio-parallel", &options);

    // A worker that cannot start (`false` exits at once): the error banner, and no empty chart.
    // One rank, so the message names the same rank every time.
    let one_rank = Settings { plan: ParallelPlan::default(), ..tiles_settings() };
    let engine =
        EngineOptions { worker_exe: Some("/bin/false".into()), skip_device_probe: true, ..EngineOptions::default() };
    let mut failing = build_sized(one_rank, engine, SIZE);
    let f = &mut failing.harness;
    f.state_mut().devices = Some(pinned_devices(false));
    f.get_by_label("Generate").click();
    step_until(f, "the failure", Duration::from_secs(120), |app| matches!(app.live.status, RunStatus::Failed(_)));
    settle(f);
    f.get_by_label("No memory samples: the run stopped before the workers reported.");
    shot(f, "studio-error", &options);
    if std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "no" | "off")) {
        for name in NAMES {
            recompress(name);
        }
    }
    // Both harnesses' comparisons in one report (fails here, naming every snapshot that differs).
    let mut results = s.harness.take_snapshot_results();
    results.extend_harness(f);
    results.unwrap();
}

/// Puts `live` on screen (the piece textures are rebuilt from it: their order may have changed).
fn show(h: &mut Harness<'static, StudioApp>, live: LiveRun) {
    let app = h.state_mut();
    app.live = live;
    app.textures.pieces.clear();
}

/// Steps until the engine has answered what the form asks (model, prediction) and the layout is
/// stable, with the pointer gone (no hover highlight or tooltip in the picture).
fn settle(h: &mut Harness<'static, StudioApp>) {
    h.remove_cursor();
    step_until(h, "the model check and the prediction", Duration::from_secs(60), |app| {
        app.model.info.is_some() && app.prediction.is_some()
    });
    // Sizes settle over a few passes (side panel, grids, plot bounds).
    h.run_steps(4);
}

/// Compares the current frame with `assets/screenshots/NAME.png` (collected; the harness fails the
/// test when dropped if any differ).
fn shot(h: &mut Harness<'static, StudioApp>, name: &str, options: &SnapshotOptions) {
    h.snapshot_options(name, options);
}

/// Every snapshot, as named in `assets/screenshots/`.
const NAMES: [&str; 9] = [
    "studio-setup-demo",
    "studio-live-denoise",
    "studio-live-decode",
    "studio-tile-inspector",
    "studio-result",
    "studio-compare",
    "studio-setup-model-folder",
    "studio-parallel",
    "studio-error",
];

/// Kittest writes its PNGs with fast compression; the checked-in files are re-encoded with the best
/// compression and adaptive filters (the same RGBA pixels, smaller: the tracked tree is capped at
/// 50 MiB). RGBA, not RGB: the frame has translucent pixels (window shadows), compared as such.
fn recompress(name: &str) {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let path = std::path::Path::new(OUTPUT).join(format!("{name}.png"));
    let rgba = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgba8();
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    rgba.write_with_encoder(PngEncoder::new_with_quality(file, CompressionType::Best, FilterType::Adaptive)).unwrap();
}

/// A fixed machine: 16 cores and 64 GiB of RAM, and with `gpus` four 24 GiB GPUs in a CUDA build
/// (the real probe's answer differs on every machine).
fn pinned_devices(gpus: bool) -> DoctorReport {
    let gpu = |index| GpuReport {
        index,
        name: "NVIDIA GeForce RTX 4090".into(),
        mem_total_bytes: 24564 * MIB,
        mem_used_bytes: Some(0),
        compute_capability: Some("8.9".into()),
    };
    let list: Vec<GpuReport> = if gpus { (0..4).map(gpu).collect() } else { Vec::new() };
    DoctorReport {
        cpu: CpuReport {
            brand: "x86-64".into(),
            logical_cores: 16,
            physical_cores: Some(8),
            ram_total_bytes: 64 * GIB,
            ram_available_bytes: 60 * GIB,
        },
        nvml: NvmlReport {
            error: (!gpus).then(|| "NVML not found (no NVIDIA driver)".into()),
            driver_version: gpus.then(|| "575.57.08".into()),
            cuda_driver_version: gpus.then(|| "12.9".into()),
            gpus: list.clone(),
            p2p: Vec::new(),
        },
        worker: WorkerReport {
            exe: None,
            probe: Some(WorkerProbe {
                version: "pinned".into(),
                cuda_built: gpus,
                cuda_devices: list,
                ..WorkerProbe::default()
            }),
            error: None,
        },
    }
}

/// Seconds each phase takes on the fixed timeline; phases not named here take one second.
fn phase_seconds(name: &str) -> f64 {
    match name {
        "load" => 1.5,
        "encode" => 0.5,
        "denoise" => 4.0,
        "decode" => 2.5,
        _ => 1.0,
    }
}

/// Sampling period of the fixed memory trace.
const SAMPLE_SECS: f64 = 0.25;

/// The run with its measurements replaced by a fixed timeline: each rank's phases (names and order
/// as the run reported them) back to back with [`phase_seconds`], a memory sample every
/// [`SAMPLE_SECS`] (weights while loading, a plateau while denoising, a rank-dependent peak while
/// decoding), steps evenly through the denoise, pieces evenly through the decode.
fn pin(real: &LiveRun) -> LiveRun {
    let mut live = real.clone();
    live.log.clear();
    let mut end: f64 = 0.0;
    for (rank, trace) in live.ranks.iter_mut().enumerate() {
        let mut t = 0.0;
        for (i, phase) in trace.phases.iter_mut().enumerate() {
            phase.start_secs = t;
            phase.seconds = phase_seconds(&phase.name);
            phase.peak_bytes = level(&phase.name, rank, 1.0) + i as u64 * MIB;
            t += phase.seconds;
        }
        end = end.max(t);
        let phases = trace.phases.clone();
        let samples = (t / SAMPLE_SECS).round() as usize;
        let mut peak = 0;
        trace.memory = (0..=samples)
            .map(|k| {
                let at = k as f64 * SAMPLE_SECS;
                let used = used_at(&phases, rank, at);
                peak = peak.max(used);
                MemoryPoint { elapsed_secs: at, used_bytes: used, peak_bytes: peak, rss_bytes: used + 40 * MIB }
            })
            .collect();
    }
    live.status = RunStatus::Finished { wall_seconds: end + 0.4 };
    let denoise = span(&live, "denoise");
    let total = live.progress.total.max(1);
    live.progress = Progress {
        message: "denoise".into(),
        step: total,
        total,
        history: (1..=total).map(|s| (denoise.0 + denoise.1 * s as f64 / total as f64, s)).collect(),
    };
    // Pieces in a fixed order (which rank's piece lands first varies), numbered in that order.
    live.pieces.sort_by_key(|p| (p.piece.latent_chunk, p.piece.pixel_rect[0], p.piece.pixel_rect[1], p.rank.0));
    for (i, piece) in live.pieces.iter_mut().enumerate() {
        piece.arrival = i + 1;
    }
    let decode = span(&live, "decode");
    let n = live.pieces.len().max(1) as f64;
    for (i, piece) in live.pieces.iter_mut().enumerate() {
        let arrived = decode.0 + decode.1 * (i + 1) as f64 / n;
        piece.piece.seconds = decode.1 / n * 2.0;
        piece.rank_memory = live
            .ranks
            .get(piece.rank.0)
            .and_then(|r| r.memory.iter().rev().find(|m| m.elapsed_secs <= arrived))
            .copied();
    }
    live
}

/// Start and length of phase `name` on rank 0's pinned timeline.
fn span(live: &LiveRun, name: &str) -> (f64, f64) {
    let phases: &[PhaseBand] = live.ranks.first().map(|r| &r.phases[..]).unwrap_or(&[]);
    phases.iter().find(|p| p.name == name).map(|p| (p.start_secs, p.seconds)).unwrap_or((0.0, 1.0))
}

/// Heap in use during phase `name` at `fraction` (0..1) of it.
fn level(name: &str, rank: usize, fraction: f64) -> u64 {
    let weights = 24 * MIB;
    let extra = match name {
        "load" => return (weights as f64 * fraction) as u64,
        "encode" => 6 * MIB,
        "denoise" => 18 * MIB,
        "decode" => {
            ((30 + 8 * rank as u64) as f64 * (0.5 + 0.5 * (fraction * std::f64::consts::PI).sin())) as u64 * MIB
        }
        _ => 2 * MIB,
    };
    weights + extra
}

fn used_at(phases: &[PhaseBand], rank: usize, at: f64) -> u64 {
    match phases.iter().find(|p| at >= p.start_secs && at < p.start_secs + p.seconds) {
        Some(p) => level(&p.name, rank, (at - p.start_secs) / p.seconds),
        None => level("", rank, 0.0),
    }
}

#[derive(Clone, Copy)]
enum Moment {
    /// 70% through the denoise (past step 2 of 3, clear of its timestamp).
    Denoise,
    /// Half-way through the decode (half the pieces arrived).
    Decode,
}

/// The pinned run as it stood at `moment`: the samples, finished phases, steps and pieces up to
/// then, the run still going. The denoise preview is the run's last one (only the latest is kept),
/// labelled with the step the cut is at.
fn cut(run: &LiveRun, moment: Moment) -> LiveRun {
    let mut live = run.clone();
    let (start, seconds) = span(run, if matches!(moment, Moment::Denoise) { "denoise" } else { "decode" });
    let at = start + seconds * if matches!(moment, Moment::Denoise) { 0.7 } else { 0.55 };
    live.status = RunStatus::Running;
    for trace in &mut live.ranks {
        trace.memory.retain(|m| m.elapsed_secs <= at);
        trace.phases.retain(|p| p.start_secs + p.seconds <= at);
    }
    let history: Vec<(f64, u64)> = run.progress.history.iter().copied().filter(|(t, _)| *t <= at).collect();
    live.progress.step = history.last().map(|h| h.1).unwrap_or(0);
    live.progress.history = history;
    let n = run.pieces.len();
    let arrived = match moment {
        Moment::Denoise => 0,
        Moment::Decode => n / 2,
    };
    live.pieces.truncate(arrived);
    if let Some(p) = &mut live.denoise_preview {
        // The preview counts sampler steps, the progress bar its own units: the same fraction.
        let done = live.progress.step as f64 / run.progress.total.max(1) as f64;
        p.step = (p.total as f64 * done).floor() as usize;
    }
    live
}

/// The recorded runs with the fixed timeline's figures (the real ones vary from run to run): the
/// halo run a little faster to decode and lighter than the tiles run.
fn pin_records(app: &mut StudioApp) {
    for (i, record) in app.runs.runs.iter_mut().enumerate() {
        let lighter = i as u64 * 6 * MIB;
        let report = &mut record.report;
        let mut wall: f64 = 0.0;
        for (rank, r) in report.ranks.iter_mut().enumerate() {
            let mut t = 0.0;
            for p in &mut r.phases {
                p.start_secs = t;
                p.seconds = phase_seconds(&p.name) * if p.name == "decode" { 1.0 - 0.3 * i as f64 } else { 1.0 };
                p.peak_bytes = level(&p.name, rank, 0.5).saturating_sub(lighter);
                p.start_bytes = 24 * MIB;
                t += p.seconds;
            }
            r.seconds = t;
            r.peak_bytes = r.phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
            r.peak_rss_bytes = r.peak_bytes + 40 * MIB;
            r.weights_bytes = 24 * MIB;
            wall = wall.max(t);
        }
        report.wall_seconds = wall + 0.4;
        record.finished_unix_secs = 1_780_000_000 + i as u64 * 60;
    }
}
