//! Headless studio tests that need no workers: filling the form, the invalid-size and
//! missing-model messages (dismissible, app still usable), and settings persistence.

mod studio_support;

use std::time::Duration;

use eframe::egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use studio_support::{step_until, studio};
use tessera_app::studio::state::Settings;

#[test]
fn form_fills_and_an_invalid_size_names_the_nearest_valid_values() {
    let mut s = studio(Settings::default(), false);
    let h = &mut s.harness;
    h.get_by_role_and_label(Role::MultilineTextInput, "Prompt").set_text_value_accesskit("a lighthouse at dusk");
    h.get_by_role_and_label(Role::SpinButton, "Width").set_value_accesskit(250.0);
    h.get_by_role_and_label(Role::SpinButton, "Frames").set_value_accesskit(13.0);
    h.run_steps(3);
    assert_eq!(h.state().settings.prompt, "a lighthouse at dusk");
    assert_eq!((h.state().settings.width, h.state().settings.frames), (250, 13));
    // Shown inline while typing, in the form's words (no CLI flag names)…
    h.get_by_label("Width 250 is not a multiple of 32 for this model; nearest valid: 224 or 256");
    // …and as a message when Generate is pressed anyway (the check fails before any worker starts).
    h.get_by_label("Generate").click();
    step_until(h, "the invalid-size message", Duration::from_secs(120), |app| {
        app.messages.items.iter().any(|m| m.text.starts_with("Width 250"))
    });
    let text = &h.state().messages.items[0].text;
    assert_eq!(text, "Width 250 is not a multiple of 32 for this model; nearest valid: 224 or 256");
    // Dismiss it; the app stays usable: snap the size and the inline error is gone.
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    assert!(h.state().messages.items.is_empty());
    // Once the shipped demo folder is read the panel shows what it is.
    step_until(h, "the demo model's description", Duration::from_secs(30), |app| matches!(app.model.info, Some(Ok(_))));
    h.get_by_label_contains("Wan2.2 TI2V-5B layout (WanPipeline), 4 blocks × 4 heads");
    h.get_by_label("Snap to valid").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.width, 256);
    let inline = "Width 250 is not a multiple of 32 for this model; nearest valid: 224 or 256";
    assert!(h.query_by_label(inline).is_none());
    assert!(!h.state().live.status.is_busy());
}

#[test]
fn a_missing_model_folder_is_reported_inline_and_on_generate() {
    let mut s = studio(Settings::default(), false);
    let h = &mut s.harness;
    let demo_box = "Demo model (2 CPU virtual devices)";
    h.get_by_role_and_label(Role::CheckBox, demo_box).click();
    h.run_steps(2);
    assert!(!h.state().settings.use_demo);
    h.get_by_role_and_label(Role::TextInput, "Model folder").set_text_value_accesskit("/nonexistent/Wan2.2-TI2V-5B");
    step_until(h, "the folder check", Duration::from_secs(30), |app| {
        app.model.path.to_str() == Some("/nonexistent/Wan2.2-TI2V-5B") && app.model.info.is_some()
    });
    h.get_by_label("model folder not found: /nonexistent/Wan2.2-TI2V-5B");
    h.get_by_label("Generate").click();
    h.run_steps(2);
    let texts: Vec<&str> = h.state().messages.items.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["Model: model folder not found: /nonexistent/Wan2.2-TI2V-5B"]);
    assert!(!h.state().live.status.is_busy(), "nothing may start without a model");
    // Back to the demo: the error goes away.
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    h.get_by_role_and_label(Role::CheckBox, demo_box).click();
    h.run_steps(3);
    assert!(h.state().settings.use_demo && h.state().messages.items.is_empty());
    assert!(h.query_by_label_contains("model folder not found").is_none());
}

#[test]
fn settings_persist_through_eframe_storage() {
    struct MemoryStorage(std::collections::HashMap<String, String>);
    impl eframe::Storage for MemoryStorage {
        fn get_string(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn set_string(&mut self, key: &str, value: String) {
            self.0.insert(key.into(), value);
        }
        fn remove_string(&mut self, key: &str) {
            self.0.remove(key);
        }
        fn flush(&mut self) {}
    }
    let mut s = studio(Settings { seed: 1234, width: 512, height: 512, ..Settings::default() }, false);
    let mut storage = MemoryStorage(Default::default());
    eframe::App::save(s.harness.state_mut(), &mut storage);
    let back: Settings = eframe::get_value(&storage, tessera_app::studio::app::SETTINGS_KEY).unwrap();
    assert_eq!(back, s.harness.state().settings);
}

#[test]
fn picking_a_preset_sets_the_plan_and_size_and_a_plan_saves_as_a_preset() {
    let mut s = studio(Settings::default(), false);
    let h = &mut s.harness;
    step_until(h, "the presets", Duration::from_secs(30), |app| !app.presets.is_empty());
    h.get_by_role_and_label(Role::ComboBox, "Preset").click();
    h.run_steps(2);
    h.get_by_label("cpu-demo").click();
    h.run_steps(2);
    let app = h.state();
    let preset = app.presets.iter().find(|p| p.name == "cpu-demo").unwrap();
    assert_eq!(app.settings.plan, preset.plan);
    assert_eq!(app.settings.preset.as_deref(), Some("cpu-demo"));
    assert_eq!(Some(app.settings.height), preset.defaults.height);
    assert_eq!(Some(app.settings.frames), preset.defaults.frames);
    // Editing the plan makes it custom again.
    h.get_by_role_and_label(Role::SpinButton, "FSDP").set_value_accesskit(2.0);
    h.run_steps(2);
    assert_eq!(h.state().settings.preset, None);
    assert_eq!(h.state().settings.plan.fsdp, 2);
    // Save it under a name: it lands in the data folder and in the list.
    h.get_by_label("Save preset…").click();
    h.run_steps(2);
    h.get_by_role_and_label(Role::TextInput, "Preset name").set_text_value_accesskit("two-ranks-fsdp");
    h.run_steps(2);
    h.get_by_label("Save").click();
    step_until(h, "the saved preset in the list", Duration::from_secs(30), |app| {
        app.presets.iter().any(|p| p.name == "two-ranks-fsdp")
    });
    let saved = s.data_dir.path().join("presets/two-ranks-fsdp.toml");
    let back = tessera_engine::planner::preset::load(&saved).unwrap();
    assert_eq!(back.plan, s.harness.state().settings.plan);
}
