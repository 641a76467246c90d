//! `demo.json`: what a model trained for a narrow vocabulary says about itself — Tessera's built-in
//! demo (`assets/demo/`, trained by `scripts/demo/train.py`). Its default request (size, frames,
//! steps, guidance, shift) and the words its prompts may use.
//!
//! Read here only, by [`DemoInfo::read`]: [`super::ModelSpec::open`] keeps it as
//! [`super::ModelSpec::demo`], the CLI fills the size/steps flags it was not given from it, and the
//! studio takes its demo defaults and the note on what the demo can draw from it.

use std::path::{Path, PathBuf};

use super::ModelSpecError;

/// The file's name in the model folder.
pub const DEMO_FILE: &str = "demo.json";

/// One slot of the prompt template and the words it takes.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Slot {
    pub slot: String,
    pub words: Vec<String>,
}

/// `demo.json` of a model folder.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct DemoInfo {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Flow shift; `None`: the scheduler config's.
    #[serde(default)]
    pub shift: Option<f64>,
    /// The prompt template, slots in braces: `a {colour} {object} moving {direction} on {background}`.
    pub template: String,
    /// The template's slots in order, with their words.
    pub vocabulary: Vec<Slot>,
    /// A prompt that works (the studio's default prompt for the demo).
    pub example: String,
    /// The prompt embeddings' length (diffusers' `max_sequence_length`); `None`: Wan's 512. The demo
    /// was trained with 16: its ~9 prompt tokens would otherwise be few among ~500 padding rows in
    /// every cross-attention.
    #[serde(default)]
    pub max_sequence_length: Option<usize>,
}

impl DemoInfo {
    /// `root/demo.json` when `root` is a folder that has one; `Ok(None)` otherwise.
    pub fn read(root: &Path) -> Result<Option<Self>, ModelSpecError> {
        let file = root.join(DEMO_FILE);
        if !root.is_dir() || !file.is_file() {
            return Ok(None);
        }
        let info: Self = super::read_json(&file, DEMO_FILE)?;
        info.check(&file)?;
        Ok(Some(info))
    }

    /// Every slot of the template has words and every word list belongs to a slot of the template.
    fn check(&self, file: &Path) -> Result<(), ModelSpecError> {
        let invalid = |msg: String| ModelSpecError::Invalid { component: DEMO_FILE, path: PathBuf::from(file), msg };
        for s in &self.vocabulary {
            if !self.template.contains(&format!("{{{}}}", s.slot)) {
                return Err(invalid(format!(
                    "vocabulary slot «{}» is not in the template «{}»",
                    s.slot, self.template
                )));
            }
            if s.words.is_empty() {
                return Err(invalid(format!("vocabulary slot «{}» has no words", s.slot)));
            }
        }
        let slots = self.template.matches('{').count();
        if slots != self.vocabulary.len() {
            return Err(invalid(format!(
                "the template «{}» has {slots} slots, the vocabulary {}",
                self.template,
                self.vocabulary.len()
            )));
        }
        Ok(())
    }

    /// One line for the UI: the template and each slot's words.
    pub fn vocabulary_line(&self) -> String {
        let slots: Vec<String> =
            self.vocabulary.iter().map(|s| format!("{}: {}", s.slot, s.words.join(", "))).collect();
        format!("Prompts: \"{}\" — {}.", self.template, slots.join("; "))
    }

    /// Every prompt the template makes, in order (the first slot varies slowest).
    pub fn prompts(&self) -> Vec<String> {
        let mut out = vec![self.template.clone()];
        for s in &self.vocabulary {
            let key = format!("{{{}}}", s.slot);
            out = out.iter().flat_map(|p| s.words.iter().map(|w| p.replace(&key, w))).collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(DEMO_FILE), text).unwrap();
    }

    const GOOD: &str = r#"{"height": 64, "width": 64, "frames": 9, "steps": 10, "guidance": 3.0, "shift": 3.0,
        "template": "a {colour} {object}", "example": "a red ball",
        "vocabulary": [{"slot": "colour", "words": ["red", "blue"]}, {"slot": "object", "words": ["ball"]}]}"#;

    #[test]
    fn reads_defaults_and_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DemoInfo::read(dir.path()).unwrap(), None, "no demo.json: no demo info");
        write(dir.path(), GOOD);
        let info = DemoInfo::read(dir.path()).unwrap().unwrap();
        assert_eq!((info.height, info.width, info.frames, info.steps), (64, 64, 9, 10));
        assert_eq!((info.guidance, info.shift), (3.0, Some(3.0)));
        assert_eq!(info.prompts(), ["a red ball", "a blue ball"]);
        assert_eq!(info.vocabulary_line(), "Prompts: \"a {colour} {object}\" — colour: red, blue; object: ball.");
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &GOOD.replace("a {colour} {object}", "a {colour}"));
        let e = DemoInfo::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("demo.json") && e.contains("«object» is not in the template"), "{e}");
        write(dir.path(), "{\"height\": 64}");
        let e = DemoInfo::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("demo.json") && e.contains("missing field"), "{e}");
    }
}
