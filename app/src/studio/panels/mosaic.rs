//! Decode mosaic: the output frame assembling from the VAE pieces as they arrive, each drawn from
//! its preview, outlined in its rank's colour and numbered in arrival order; a slider picks the
//! latent chunk (halo mode sends one slab per chunk). Clicking a piece opens its inspector.

use eframe::egui::{self, Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, StrokeKind, Vec2};
use tessera_engine::api::VaeMode;

use crate::studio::app::StudioApp;
use crate::studio::state::PieceView;
use crate::studio::theme;

/// Largest height of the mosaic canvas in points.
const MAX_CANVAS_HEIGHT: f32 = 360.0;

/// `[y, x, h, w]` in pixels → a rect on a canvas at `origin` scaled by `scale`.
fn rect_on_canvas(origin: Pos2, scale: f32, [y, x, h, w]: [usize; 4]) -> Rect {
    Rect::from_min_size(origin + Vec2::new(x as f32, y as f32) * scale, Vec2::new(w as f32, h as f32) * scale)
}

/// Pieces of `chunk` (tiles cover all frames and are always shown).
fn visible(pieces: &[PieceView], chunk: Option<usize>) -> impl Iterator<Item = (usize, &PieceView)> {
    pieces.iter().enumerate().filter(move |(_, p)| p.piece.latent_chunk.is_none() || p.piece.latent_chunk == chunk)
}

pub fn mosaic_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let pieces = &app.live.pieces;
    ui.label(format!("Decode mosaic — {} piece{} arrived", pieces.len(), if pieces.len() == 1 { "" } else { "s" }));
    let (height, width) = app.live.output_hw;
    if pieces.is_empty() || height == 0 || width == 0 {
        ui.weak("Tiles (tiles mode) or slabs (halo mode) appear here as the VAE decodes them.");
        return;
    }
    let max_chunk = pieces.iter().filter_map(|p| p.piece.latent_chunk).max();
    let chunk = match max_chunk {
        Some(max) => {
            let mut c = app.view.mosaic_chunk.unwrap_or(max).min(max);
            let label = ui.label("Latent chunk");
            ui.add(egui::Slider::new(&mut c, 0..=max)).labelled_by(label.id);
            if c != max || app.view.mosaic_chunk.is_some() {
                app.view.mosaic_chunk = Some(c);
            }
            Some(c)
        }
        None => None,
    };
    let avail = ui.available_width().max(64.0);
    let scale = (avail / width as f32).min(MAX_CANVAS_HEIGHT / height as f32);
    let (canvas, _) = ui.allocate_exact_size(Vec2::new(width as f32, height as f32) * scale, Sense::hover());
    let painter = ui.painter_at(canvas);
    painter.rect_filled(canvas, 0.0, Color32::from_gray(20));
    let mut clicked = None;
    for (i, view) in visible(pieces, chunk) {
        let rect = rect_on_canvas(canvas.min, scale, view.piece.pixel_rect);
        if let Some(Some(texture)) = app.textures.pieces.get(i) {
            let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
            painter.image(texture.id(), rect, uv, Color32::WHITE);
        }
        let color = theme::rank_color(view.rank.0);
        painter.rect_stroke(rect, 0.0, Stroke::new(2.0, color), StrokeKind::Inside);
        painter.text(
            rect.min + Vec2::splat(4.0),
            Align2::LEFT_TOP,
            view.arrival.to_string(),
            FontId::proportional(14.0),
            color,
        );
        let response = ui.interact(rect, ui.scope_id().with(("piece", i)), Sense::click());
        let label = format!("Piece {} (rank {})", view.arrival, view.rank);
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &label));
        if response.on_hover_text("Click to inspect").clicked() {
            clicked = Some(i);
        }
    }
    if clicked.is_some() {
        app.view.inspected_piece = clicked;
    }
    ui.horizontal_wrapped(|ui| {
        for rank in 0..app.live.ranks.len().max(app.live.world_size) {
            ui.colored_label(theme::rank_color(rank), format!("rank {rank}"));
        }
    });
}

/// The inspector of the clicked piece: its fields, the rank's memory at the time, and a zoomed view
/// with the decoded region (overlap/halo included) drawn around the pixels the piece owns.
pub fn inspector_window(ctx: &egui::Context, app: &mut StudioApp) {
    let Some(index) = app.view.inspected_piece else { return };
    let Some(view) = app.live.pieces.get(index) else {
        app.view.inspected_piece = None;
        return;
    };
    let spatial = match &app.model.info {
        Some(Ok(info)) => info.vae.scale_factor_spatial,
        _ => 16,
    };
    let texture = app.textures.pieces.get(index).cloned().flatten();
    let mut open = true;
    let zoom = &mut app.view.inspector_zoom;
    // Opens at the right edge, clear of the top bar and the setup panel.
    let default_pos = egui::pos2(ctx.content_rect().right() - 400.0, 60.0);
    let window = egui::Window::new(format!("Piece {} inspector", view.arrival)).default_pos(default_pos);
    window.open(&mut open).resizable(true).show(ctx, |ui| {
        let p = &view.piece;
        egui::Grid::new("inspector-grid").num_columns(2).show(ui, |ui| {
            let row = |ui: &mut egui::Ui, k: &str, v: String| {
                ui.label(k);
                ui.label(v);
                ui.end_row();
            };
            row(ui, "Rank", view.rank.to_string());
            row(ui, "Mode", p.mode.to_string());
            row(ui, "Index", p.index.to_string());
            row(ui, "Latent chunk", p.latent_chunk.map(|c| c.to_string()).unwrap_or_else(|| "all".into()));
            row(ui, "Frames", format!("{}..{}", p.frames[0], p.frames[1]));
            let [y, x, h, w] = p.pixel_rect;
            row(ui, "Pixel rect", format!("y {y}, x {x}, {w}×{h}"));
            let [ly, lx, lh, lw] = p.latent_rect;
            row(ui, "Latent rect", format!("y {ly}, x {lx}, {lw}×{lh} (with overlap/halo)"));
            row(ui, "Decode time", format!("{:.3} s", p.seconds));
            row(ui, "Bytes sent", theme::bytes(p.bytes_sent));
            let memory = view
                .rank_memory
                .map(|m| format!("{} used, {} peak", theme::bytes(m.used_bytes), theme::bytes(m.peak_bytes)))
                .unwrap_or_else(|| "no sample yet".into());
            row(ui, "Rank memory then", memory);
        });
        let label = ui.label("Zoom");
        ui.add(egui::Slider::new(zoom, 1.0..=12.0)).labelled_by(label.id);
        if let Some(texture) = &texture {
            ui.image((texture.id(), texture.size_vec2() * *zoom));
        }
        ui.label("Owned pixels (solid) inside the decoded region (dashed): the band between is overlap or halo.");
        region_diagram(ui, view, spatial);
    });
    if !open {
        app.view.inspected_piece = None;
    }
}

/// The piece's owned pixel rect and its decoded latent rect (in pixels) on a small frame diagram.
fn region_diagram(ui: &mut egui::Ui, view: &PieceView, spatial: usize) {
    let p = &view.piece;
    let [ly, lx, lh, lw] = p.latent_rect;
    let decoded = [ly * spatial, lx * spatial, lh * spatial, lw * spatial];
    let [y, x, h, w] = p.pixel_rect;
    let extent_h = (decoded[0] + decoded[2]).max(y + h) as f32;
    let extent_w = (decoded[1] + decoded[3]).max(x + w) as f32;
    let scale = (240.0 / extent_w.max(1.0)).min(160.0 / extent_h.max(1.0));
    let (canvas, _) = ui.allocate_exact_size(Vec2::new(extent_w, extent_h) * scale, Sense::hover());
    let painter = ui.painter_at(canvas);
    painter.rect_filled(canvas, 0.0, Color32::from_gray(25));
    let color = theme::rank_color(view.rank.0);
    let owned = rect_on_canvas(canvas.min, scale, p.pixel_rect);
    painter.rect_filled(owned, 0.0, color.gamma_multiply(0.35));
    painter.rect_stroke(owned, 0.0, Stroke::new(2.0, color), StrokeKind::Inside);
    let region = rect_on_canvas(canvas.min, scale, decoded);
    let dashes = egui::Shape::dashed_line(
        &[region.left_top(), region.right_top(), region.right_bottom(), region.left_bottom(), region.left_top()],
        Stroke::new(1.5, Color32::WHITE),
        6.0,
        4.0,
    );
    painter.extend(dashes);
    if p.mode == VaeMode::Tiles {
        ui.weak("Tiles blend into their neighbours over the overlap; halo slabs are exact (no blend).");
    }
}
