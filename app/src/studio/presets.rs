//! Presets in the studio: the named plans of `presets/*.toml` (loaded with the planner's
//! `preset::load_dir`) plus the user's own, saved from the Parallel panel into the data dir.
//! Picking one sets the plan and the request defaults it carries.

use std::path::{Path, PathBuf};
use tessera_engine::api::{render, Audience};

use tessera_engine::api::planning::{load_presets, parse_preset, Preset};
use tessera_engine::api::{write_file_atomic, Family, ParallelPlan, TilingSpec};

use super::state::Settings;

/// Preset folders, in order: `$TESSERA_PRESETS_DIR`, the `presets/` of the source tree or install
/// (`<exe>/../../presets`, i.e. beside `target/`), then the user's `<data dir>/presets`.
pub fn folders(data_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("TESSERA_PRESETS_DIR").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/tessera → the workspace's presets/; tests run from target/<profile>/deps/.
        for up in exe.ancestors().skip(1).take(4) {
            let candidate = up.join("presets");
            if candidate.is_dir() && !dirs.contains(&candidate) {
                dirs.push(candidate);
                break;
            }
        }
    }
    if let Some(d) = data_dir {
        dirs.push(d.join("presets"));
    }
    dirs
}

/// Every preset found (by name; a later folder's preset of the same name wins), and the files that
/// could not be read, as messages.
pub fn load_all(folders: &[PathBuf]) -> (Vec<Preset>, Vec<String>) {
    let mut presets: Vec<Preset> = Vec::new();
    let mut errors = Vec::new();
    for dir in folders.iter().filter(|d| d.is_dir()) {
        match load_presets(dir) {
            Ok(found) => {
                for p in found {
                    presets.retain(|q| q.name != p.name);
                    presets.push(p);
                }
            }
            Err(e) => errors.push(format!("Preset: {}", render(&e.to_string(), Audience::Gui))),
        }
    }
    presets.sort_by(|a, b| a.name.cmp(&b.name));
    (presets, errors)
}

/// The family a preset was sized for, from its `model` (`wan2.2-…` / `hv15-…`); `None` when it
/// names none (the user's own presets).
pub fn family_of(p: &Preset) -> Option<Family> {
    let model = p.model.as_deref()?;
    if model.starts_with("hv15") {
        Some(Family::HunyuanVideo15)
    } else if model.starts_with("wan") {
        Some(Family::Wan)
    } else {
        None
    }
}

/// Indices of `presets` for `family` (and those naming no model) and of the others, each in the
/// list's order. Without a family every preset is in the first group.
pub fn by_family(presets: &[Preset], family: Option<Family>) -> (Vec<usize>, Vec<usize>) {
    (0..presets.len()).partition(|&i| match (family, family_of(&presets[i])) {
        (Some(f), Some(g)) => f == g,
        _ => true,
    })
}

/// Applies `p` to the settings: its plan, and each request default it carries.
pub fn apply(p: &Preset, s: &mut Settings) {
    s.plan = p.plan;
    let d = &p.defaults;
    s.height = d.height.unwrap_or(s.height);
    s.width = d.width.unwrap_or(s.width);
    s.frames = d.frames.unwrap_or(s.frames);
    s.steps = d.steps.unwrap_or(s.steps);
    s.guidance = d.guidance.unwrap_or(s.guidance);
    // A distilled preset names its sampler and schedule; others keep the model's.
    s.scheduler = d.scheduler;
    s.sigmas = d.sigmas.clone();
    s.preset = Some(p.name.clone());
}

/// A preset name usable as a file stem.
pub fn valid_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || name.starts_with('.')
    {
        return Err(format!("preset name `{name}`: use letters, digits, `-`, `_` or `.` (it becomes NAME.toml)"));
    }
    Ok(name)
}

/// The TOML text of a preset for `s` (the format `planner::preset` reads).
pub fn to_toml(s: &Settings, description: &str) -> String {
    let ParallelPlan {
        ranks,
        ulysses,
        cfg_parallel,
        fsdp,
        vae_parallel,
        vae_mode,
        vae_tiling,
        text_encoder,
        residency,
    } = s.plan;
    let mut text = format!("# {}\n", description.replace('\n', " "));
    text += &format!(
        "\n[plan]\nranks = {ranks}\nulysses = {ulysses}\ncfg_parallel = {cfg_parallel}\nfsdp = {fsdp}\nvae_parallel = {vae_parallel}\nvae_mode = \"{vae_mode}\"\ntext_encoder = \"{text_encoder}\"\nresidency = \"{residency}\"\n"
    );
    if let Some(TilingSpec { tile_height, tile_width, stride_height, stride_width }) = vae_tiling {
        text += &format!(
            "vae_tiling = {{ tile_height = {tile_height}, tile_width = {tile_width}, stride_height = {stride_height}, stride_width = {stride_width} }}\n"
        );
    }
    text += &format!(
        "\n[defaults]\nheight = {}\nwidth = {}\nframes = {}\nsteps = {}\nguidance = {:?}\n",
        s.height, s.width, s.frames, s.steps, s.guidance
    );
    text
}

/// Writes `<dir>/<name>.toml` after checking that the planner reads it back to the same plan.
pub fn save(dir: &Path, name: &str, s: &Settings) -> Result<PathBuf, String> {
    let name = valid_name(name)?;
    let path = dir.join(format!("{name}.toml"));
    let text = to_toml(s, &format!("Saved from the studio: {}×{}×{} frames.", s.width, s.height, s.frames));
    let parsed = parse_preset(&path, &text).map_err(|e| e.to_string())?;
    if parsed.plan != s.plan {
        return Err(format!("preset {name} would not read back as the same plan"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_file_atomic(&path, |tmp| std::fs::write(tmp, &text).map_err(|e| e.to_string())).map_err(|e| e.to_string())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_engine::api::planning::load_preset;
    use tessera_engine::api::VaeMode;

    #[test]
    fn the_repository_presets_load_and_apply() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets");
        let (presets, errors) = load_all(&[dir]);
        assert!(errors.is_empty(), "{errors:?}");
        let demo = presets.iter().find(|p| p.name == "cpu-demo").expect("presets/cpu-demo.toml");
        let mut s = Settings::default();
        apply(demo, &mut s);
        assert_eq!(s.plan, demo.plan);
        assert_eq!(s.preset.as_deref(), Some("cpu-demo"));
        assert_eq!(Some(s.height), demo.defaults.height.or(Some(s.height)));
    }

    #[test]
    fn saved_presets_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::default();
        s.plan.vae_mode = VaeMode::Tiles;
        s.plan.vae_tiling = Some(TilingSpec::default());
        let path = save(dir.path(), "my-plan", &s).unwrap();
        let back = load_preset(&path).unwrap();
        assert_eq!(back.plan, s.plan);
        assert_eq!(back.defaults.width, Some(s.width));
        assert!(save(dir.path(), "../evil", &s).unwrap_err().contains("preset name"));
    }

    /// An HV1.5 model lists the HV1.5 presets (480p and 720p × 1/2/4/8 × 4090) first, the Wan
    /// ones after; without a model every preset is in one list.
    #[test]
    fn presets_are_grouped_by_the_models_family() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets");
        let (presets, _) = load_all(&[dir]);
        let names = |v: &[usize]| v.iter().map(|&i| presets[i].name.clone()).collect::<Vec<_>>();
        let (mine, others) = by_family(&presets, Some(Family::HunyuanVideo15));
        assert_eq!(mine.len(), 8, "{:?}", names(&mine));
        assert!(names(&mine).iter().all(|n| n.starts_with("hv15-")), "{:?}", names(&mine));
        assert!(names(&others).contains(&"cpu-demo".to_string()));
        let (wan, _) = by_family(&presets, Some(Family::Wan));
        assert!(names(&wan).iter().all(|n| !n.starts_with("hv15-")));
        let (all, none) = by_family(&presets, None);
        assert_eq!((all.len(), none.len()), (presets.len(), 0));
    }
}
