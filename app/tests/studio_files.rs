//! The studio's component files and LoRAs (`panels/model_files.rs`), end to end through real
//! `tessera-worker` processes: a diffusers folder (for its scheduler and configs) whose transformer
//! and VAE are replaced by single files (the transformer a ComfyUI one), a lightx2v LoRA at 0.7, and
//! ComfyUI's single-file UMT5 + tokenizer for the prompt text — all typed into the Setup panel — run
//! as the distilled recipe (4 Euler steps on sigmas 1, .75, .5, .25, guidance 1) on 2 workers with
//! Ulysses 2 × FSDP 2, a denoise preview arriving after every step. The model reader's findings show in the panel, and the
//! run used them: the video's settings (written by the engine's session from the model it opened)
//! list the files with their hashes and the LoRA.

mod studio_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use eframe::egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use studio_support::{step_until, studio};
use tessera_app::studio::state::{RunStatus, Settings};
use tessera_engine::api::{ParallelPlan, SchedulerKind};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel).canonicalize().unwrap()
}

#[test]
fn single_file_transformer_lora_and_text_encoder_from_the_form() {
    // The tiny TI2V-style model: 32-px multiples, 4 heads (Ulysses 2 on the default 2 ranks);
    // guidance 1 (the distilled recipe): one branch, no negative prompt.
    let settings = Settings {
        use_demo: false,
        width: 64,
        height: 64,
        frames: 5,
        steps: 4,
        guidance: 1.0,
        scheduler: Some(SchedulerKind::Euler),
        sigmas: Some(vec![1.0, 0.75, 0.5, 0.25]),
        prompt: "a white cat wearing sunglasses".into(),
        plan: ParallelPlan { ranks: 2, ulysses: 2, fsdp: 2, vae_parallel: 2, ..ParallelPlan::default() },
        ..Settings::default()
    };
    let mut s = studio(settings, false);
    let (folder, transformer, vae, lora, umt5, tokenizer) = (
        fixture("golden/lora/pipeline_ti2v"),
        fixture("golden/single_file/comfy_transformer.safetensors"),
        fixture("golden/lora/pipeline_ti2v/vae/diffusion_pytorch_model.safetensors"),
        fixture("golden/lora/lora_lightx2v.safetensors"),
        fixture("umt5_single_file/umt5_xxl_fp16.safetensors"),
        fixture("golden/prompt/tokenizer/tokenizer.json"),
    );
    let h = &mut s.harness;
    h.get_by_role_and_label(Role::TextInput, "Model folder").set_text_value_accesskit(&folder.display().to_string());
    h.run_steps(2);
    h.get_by_label("Component files and LoRAs").click();
    h.run_steps(2);
    let fields = [
        ("Transformer file", &transformer),
        ("VAE file", &vae),
        ("Text encoder file", &umt5),
        ("Tokenizer", &tokenizer),
    ];
    for (label, path) in fields {
        h.get_by_role_and_label(Role::TextInput, label).set_text_value_accesskit(&path.display().to_string());
        h.run_steps(1);
    }
    h.get_by_label("Add LoRA").click();
    h.run_steps(2);
    h.get_by_role_and_label(Role::TextInput, "LoRA 1 file").set_text_value_accesskit(&lora.display().to_string());
    h.get_by_role_and_label(Role::SpinButton, "LoRA 1 strength").set_value_accesskit(0.7);
    h.run_steps(2);
    let files = &h.state().settings.files;
    assert_eq!(files.transformer.as_deref(), Some(transformer.as_path()));
    assert_eq!((files.loras.len(), files.loras[0].strength), (1, 0.7));

    // The model reader's findings, in the panel.
    step_until(h, "the model to be read", Duration::from_secs(60), |app| {
        app.model.files == app.settings.files && app.model.info.is_some()
    });
    if let Some(Err(e)) = &h.state().model.info {
        panic!("the model did not open: {e}");
    }
    h.get_by_label("transformer: comfy_transformer.safetensors (Wan-native names, prefix model.diffusion_model.)");
    h.get_by_label("text encoder: umt5_xxl_fp16.safetensors + tokenizer.json");
    h.get_by_label_contains("assumed: UMT5 relative_attention_max_distance 128");
    h.get_by_label(&format!("LoRA: {}:0.7", lora.display()));

    h.get_by_label("Generate").click();
    step_until(h, "the run to finish", Duration::from_secs(300), |app| {
        !app.live.status.is_busy() && app.live.status != RunStatus::Idle
    });
    let app = h.state();
    assert!(matches!(app.live.status, RunStatus::Finished { .. }), "{:?} {:?}", app.live.status, app.messages.items);
    let video = app.video.as_ref().expect("a decoded video");
    assert_eq!((video.frames.rgb.len(), video.frames.width, video.frames.height), (5, 64, 64));
    assert_eq!(app.live.denoise_previews, 4, "a denoise preview after each step");
    assert_eq!((app.live.world_size, app.live.progress.total), (2, 4));
    // What the run used, as the engine recorded it.
    let settings = video.exact.settings.as_ref().expect("the run's settings");
    let used: Vec<(&str, &Path)> = settings.files.iter().map(|f| (f.component.as_str(), f.path.as_path())).collect();
    println!("the run used: {used:?}");
    for (component, path) in [("transformer", &transformer), ("vae", &vae), ("text_encoder", &umt5), ("lora", &lora)] {
        assert!(used.contains(&(component, path.as_path())), "{component} {}: {used:?}", path.display());
    }
    assert!(settings.files.iter().all(|f| f.hash.len() == 12), "short hashes: {:?}", settings.files);
    assert_eq!(settings.model_files.loras[0].strength, 0.7);
    assert_eq!(settings.model_files.text_encoder.as_deref(), Some(umt5.as_path()));
    assert_eq!((settings.plan.fsdp, settings.params.sigmas.as_deref()), (2, Some(&[1.0, 0.75, 0.5, 0.25][..])));
}
