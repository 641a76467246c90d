//! "Load settings from file…": the settings a Tessera MP4 or PNG carries (`api::Settings`, read
//! on the browse thread) put back into the form, with a note for anything the form cannot hold.

use std::path::Path;

use tessera_engine::api::{Prompt, Settings as FileSettings};

use super::state::Settings;

/// Restores `from` into `s`. `demo_folder`: where the built-in demo model lives (a run of the demo
/// comes back as the demo). Returns notes about what could not be restored.
pub fn apply(from: &FileSettings, s: &mut Settings, demo_folder: Option<&Path>) -> Vec<String> {
    let mut notes = Vec::new();
    if demo_folder.is_some_and(|d| d == from.model) {
        s.use_demo = true;
    } else {
        s.use_demo = false;
        s.model_dir = from.model.display().to_string();
    }
    let mut text = |prompt: &Prompt, what: &str, slot: &mut String| match prompt {
        Prompt::Text(t) | Prompt::StandIn(t) => *slot = t.clone(),
        Prompt::Embeds(path) => notes.push(format!(
            "the {what} was an embeddings file ({}): the studio takes text, so the {what} was left as it was",
            path.display()
        )),
    };
    text(&from.prompt, "prompt", &mut s.prompt);
    match &from.negative_prompt {
        Some(n) => text(n, "negative prompt", &mut s.negative_prompt),
        // No negative branch ran (guidance ≤ 1): nothing to restore.
        None => s.negative_prompt.clear(),
    }
    s.image = from.image.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    if let Some(latents) = &from.latents {
        notes.push(format!(
            "the run started from the noise in {}, which the studio cannot load: it uses seed {} instead",
            latents.display(),
            from.params.seed
        ));
    }
    s.files = from.model_files.clone();
    let p = &from.params;
    (s.width, s.height, s.frames, s.steps, s.seed) = (p.width, p.height, p.frames, p.steps, p.seed);
    s.guidance = p.guidance;
    s.guidance_2 = p.guidance_2.unwrap_or(p.guidance);
    s.shift = p.shift;
    s.scheduler = p.scheduler;
    s.sigmas = p.sigmas.clone();
    s.plan = from.plan;
    s.preset = None;
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `tessera generate … --out x.mp4` stores (the JSON of `api::Settings`).
    const STORED: &str = r#"{"tessera":"tessera 0.1.0","model":"/models/Wan2.2-T2V-A14B-Diffusers","files":[],
        "prompt":{"text":"a fox \u00e9"},"negative_prompt":null,"image":null,"latents":null,
        "height":720,"width":1280,"frames":81,"steps":4,"guidance":1.0,"guidance_2":null,"shift":5.0,"seed":42,
        "scheduler":"euler","sigmas":[1.0,0.75,0.5,0.25],"fps":16.0,
        "plan":{"ranks":8,"ulysses":8,"cfg_parallel":1,"fsdp":8,"vae_parallel":8,"vae_mode":"halo",
                "vae_tiling":null,"text_encoder":"sharded"}}"#;

    #[test]
    fn a_stored_run_restores_the_form() {
        let from: FileSettings = serde_json::from_str(STORED).unwrap();
        let mut s = Settings { negative_prompt: "blurry".into(), preset: Some("x".into()), ..Settings::default() };
        let notes = apply(&from, &mut s, Some(Path::new("/data/demo-model-v1")));
        assert!(notes.is_empty(), "{notes:?}");
        assert!(!s.use_demo);
        assert_eq!(s.model_dir, "/models/Wan2.2-T2V-A14B-Diffusers");
        assert_eq!((s.prompt.as_str(), s.negative_prompt.as_str()), ("a fox é", ""));
        assert_eq!((s.width, s.height, s.frames, s.steps, s.seed), (1280, 720, 81, 4, 42));
        assert_eq!((s.guidance, s.guidance_2, s.shift), (1.0, 1.0, Some(5.0)));
        assert_eq!(s.scheduler, Some(tessera_engine::api::SchedulerKind::Euler));
        assert_eq!(s.sigmas, Some(vec![1.0, 0.75, 0.5, 0.25]));
        assert_eq!((s.plan.ranks, s.plan.ulysses, s.plan.fsdp), (8, 8, 8));
        assert_eq!(s.preset, None);
        // The restored form is a valid request again.
        s.params().validate(16).unwrap();
    }

    #[test]
    fn what_the_form_cannot_hold_is_named() {
        let mut from: FileSettings = serde_json::from_str(STORED).unwrap();
        from.prompt = Prompt::Embeds("/tmp/embeds.safetensors".into());
        from.latents = Some("/tmp/noise.safetensors".into());
        from.model = "/data/demo-model-v1".into();
        let mut s = Settings::default();
        let before = s.prompt.clone();
        let notes = apply(&from, &mut s, Some(Path::new("/data/demo-model-v1")));
        assert!(s.use_demo, "the demo's folder comes back as the demo");
        assert_eq!(s.prompt, before);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("embeddings file (/tmp/embeds.safetensors)"));
        assert!(notes[1].contains("seed 42"));
    }
}
