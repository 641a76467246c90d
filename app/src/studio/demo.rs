//! The built-in demo model: `assets/demo/` in the repository, a tiny pipeline with the Wan2.2 TI2V
//! architecture (VAE, transformer, UMT5 + tokenizer) trained by `scripts/demo/train.py` on
//! generated clips of one object moving over a plain background, so the studio can be tried
//! without downloading anything and draws what the prompt says within its vocabulary. Its
//! `demo.json` (read by the engine, `ModelSpec::demo`) gives the default request and the words.
//!
//! The folder is found from the executable (`target/{debug,release}/tessera` and the test
//! binaries under `target/*/deps` sit inside the repository), then from the repository the binary
//! was built from; `$TESSERA_DEMO_DIR` names another copy.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tessera_engine::api::DemoInfo;

/// The demo's folder, relative to the repository root.
pub const DEMO_DIR: &str = "assets/demo";

/// `$TESSERA_DATA_DIR`, else `$XDG_DATA_HOME/tessera`, else `~/.local/share/tessera`.
pub fn data_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("TESSERA_DATA_DIR") {
        return Some(dir);
    }
    let base = env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local/share")))?;
    Some(base.join("tessera"))
}

/// Where the demo folder is looked for, in order.
fn candidates() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("TESSERA_DEMO_DIR").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        out.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(DEMO_DIR)));
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DEMO_DIR));
    out
}

/// The demo folder, or one line saying where it was looked for and what to do (looked up once per
/// process: the UI asks every frame).
pub fn folder() -> Result<PathBuf, String> {
    static FOLDER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOLDER.get_or_init(find).clone()
}

fn find() -> Result<PathBuf, String> {
    let looked = candidates();
    // Canonical, so a run's recorded model path compares equal to the demo's whichever way it was found.
    let found = looked.iter().find(|d| d.join("model_index.json").is_file());
    found.map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())).ok_or_else(|| {
        let list: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
        format!(
            "the demo model is missing: no {DEMO_DIR}/model_index.json in {}; run tessera from a checkout of the repository (or set TESSERA_DEMO_DIR to the demo folder)",
            list.join(", ")
        )
    })
}

/// The demo's `demo.json`, read once per process (`None` when the folder or the file is missing
/// or unreadable: the run then fails with [`folder`]'s or the engine's message).
pub fn info() -> Option<&'static DemoInfo> {
    static INFO: OnceLock<Option<DemoInfo>> = OnceLock::new();
    INFO.get_or_init(|| folder().ok().and_then(|d| DemoInfo::read(&d).ok().flatten())).as_ref()
}

/// What the UI says wherever demo output is shown: what the demo can draw.
pub fn note() -> String {
    match (folder(), info()) {
        (Ok(_), Some(info)) => format!(
            "Demo model: a tiny Wan2.2-architecture model trained on generated clips; it draws one object moving over a plain background ({}×{}, {} frames). {}",
            info.width,
            info.height,
            info.frames,
            info.vocabulary_line()
        ),
        (Err(e), _) => format!("Demo model: {e}"),
        (Ok(dir), None) => format!("Demo model: {} has no readable demo.json", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_is_found_and_inspectable() {
        let root = folder().unwrap();
        let spec = tessera_engine::api::ModelSpec::from_path(&root).unwrap();
        let demo = spec.demo.as_ref().expect("assets/demo has a demo.json");
        assert_eq!(Some(demo), info());
        assert!(spec.can_encode_text(), "the demo's prompts go through its tokenizer and UMT5");
        assert_eq!((demo.height % spec.size_multiple(), demo.width % spec.size_multiple()), (0, 0));
        let note = note();
        for word in ["red", "green", "blue", "yellow", "white", "ball", "square", "left", "right", "up", "down"] {
            assert!(note.contains(word), "{note}");
        }
        assert!(demo.prompts().contains(&demo.example), "the example is one of the template's prompts");
    }
}
