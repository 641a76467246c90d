//! Colours and sizes shared by the panels (one place, so ranks look the same everywhere).

use eframe::egui::Color32;

/// Rank colours: distinct on dark and light backgrounds (Okabe–Ito palette, colour-blind safe).
const RANKS: [Color32; 8] = [
    Color32::from_rgb(230, 159, 0),
    Color32::from_rgb(86, 180, 233),
    Color32::from_rgb(0, 158, 115),
    Color32::from_rgb(240, 228, 66),
    Color32::from_rgb(0, 114, 178),
    Color32::from_rgb(213, 94, 0),
    Color32::from_rgb(204, 121, 167),
    Color32::from_rgb(170, 170, 170),
];

pub fn rank_color(rank: usize) -> Color32 {
    RANKS[rank % RANKS.len()]
}

pub const ERROR_BG: Color32 = Color32::from_rgb(110, 30, 30);
pub const INFO_BG: Color32 = Color32::from_rgb(30, 60, 100);
pub const NOTE: Color32 = Color32::from_rgb(240, 200, 80);
pub const BAD: Color32 = Color32::from_rgb(240, 110, 110);
pub const GOOD: Color32 = Color32::from_rgb(120, 210, 120);

/// `1536 MiB` → "1.50 GiB"; small values in MiB.
pub fn bytes(b: u64) -> String {
    let mib = b as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// The unit of a memory axis, picked from the largest value drawn: MiB below 1 GiB, GiB from there
/// (a 60 GiB GPU's chart in MiB reads "61440", a demo's in GiB "0.01").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryUnit {
    pub name: &'static str,
    pub bytes: f64,
}

pub fn memory_unit(max_bytes: u64) -> MemoryUnit {
    const MIB: f64 = (1u64 << 20) as f64;
    if max_bytes >= 1 << 30 {
        MemoryUnit { name: "GiB", bytes: MIB * 1024.0 }
    } else {
        MemoryUnit { name: "MiB", bytes: MIB }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_labels() {
        assert_eq!(super::bytes(3 << 20), "3.0 MiB");
        assert_eq!(super::bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn memory_axes_switch_unit_at_one_gib() {
        assert_eq!(super::memory_unit(0).name, "MiB");
        assert_eq!(super::memory_unit((1 << 30) - 1).name, "MiB");
        let gib = super::memory_unit(1 << 30);
        assert_eq!((gib.name, gib.bytes), ("GiB", (1u64 << 30) as f64));
    }
}
