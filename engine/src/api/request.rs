//! [`GenerationRequest`]: everything one generation asks for, validated against the model by one
//! function ([`GenerationRequest::validate`]) with one set of messages.

use std::path::{Path, PathBuf};

use crate::fields::Field;
use crate::media::OutputKind;
use crate::model_spec::{ModelFiles, ModelSpec};
use crate::parallel::plan::ParallelPlan;
use crate::pipeline::request::{self, GenerateParams, RequestError};
use crate::runtime::DeviceKind;

/// Where a prompt's embeddings come from (in settings JSON: `{"text": "…"}`, `{"embeds": "…"}`,
/// `{"stand_in": "…"}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Text, encoded by the model's UMT5 (on the host or sharded over the workers, per the plan).
    Text(String),
    /// A safetensors file holding `prompt_embeds` (or `negative_prompt_embeds` for a negative)
    /// `(1, L, text_dim)`.
    Embeds(PathBuf),
    /// Seeded stand-in embeddings derived from the text, for models without a text encoder (what
    /// the former random-weights demo ran; settings files of its runs still name it): the same
    /// text gives the same embeddings.
    StandIn(String),
}

impl Prompt {}

/// Where the finished video goes, written atomically once the run succeeded.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// `x.mp4`, `x.safetensors` (tensor `video` (1, F, 3, H, W) f32 in [0, 1]) or `dir/` (PNGs).
    pub path: PathBuf,
    /// MP4 frame rate; `None`: the model's default.
    pub fps: Option<f64>,
    /// Also write the final latents (tensor `latents`).
    pub latents: Option<PathBuf>,
}

/// One generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    /// A diffusers Wan pipeline folder, a folder of single files, a transformer file, or empty
    /// when `files.transformer` names it.
    pub model: PathBuf,
    /// Component files replacing (or making up) the model's, `--config`, and LoRAs.
    pub files: ModelFiles,
    pub prompt: Prompt,
    /// The negative prompt under CFG; `None`: empty text (the pipelines' default) for `Text` and
    /// `StandIn` prompts. Unused when guidance is off.
    pub negative: Option<Prompt>,
    /// Input image (PNG/JPEG) for image-to-video.
    pub image: Option<PathBuf>,
    pub params: GenerateParams,
    /// Initial noise: a safetensors file with `latents` `(1, z, T, h, w)` (e.g. exported from
    /// diffusers); else seeded noise from `params.seed`.
    pub latents: Option<PathBuf>,
    pub plan: ParallelPlan,
    pub device: DeviceKind,
    /// `false`: denoise only (no VAE decode, no video), for benchmarks.
    pub decode: bool,
    /// Keep the weights loaded on the workers after the run, so the next run with the same model
    /// and plan skips loading them (the default); `false` frees the transformer before the VAE
    /// decode instead — a lower decode peak when memory is tight.
    pub keep_weights: bool,
    pub output: Option<Output>,
    /// Live previews: rank 0 sends a `JobEvent::DenoisePreview` every this many denoise steps
    /// (`None`: none).
    pub preview_every: Option<usize>,
}

impl GenerationRequest {
    /// A text-to-video request on one CPU rank with the default plan.
    pub fn new(model: impl Into<PathBuf>, prompt: Prompt, params: GenerateParams) -> Self {
        Self {
            model: model.into(),
            files: ModelFiles::default(),
            prompt,
            negative: None,
            image: None,
            params,
            latents: None,
            plan: ParallelPlan::default(),
            device: DeviceKind::Cpu,
            decode: true,
            keep_weights: true,
            output: None,
            preview_every: None,
        }
    }

    /// The negative prompt CFG uses (`None` without CFG): the given one, else empty text (the
    /// pipelines' default) — as stand-in for a stand-in prompt, encoded when the model has a text
    /// encoder. An embeddings prompt under CFG on a model without one needs an explicit negative
    /// ([`validate`] says so).
    ///
    /// [`validate`]: GenerationRequest::validate
    pub fn negative_prompt(&self, model: &ModelSpec) -> Option<Prompt> {
        if !self.params.cfg() {
            return None;
        }
        self.negative.clone().or_else(|| match &self.prompt {
            Prompt::StandIn(_) => Some(Prompt::StandIn(String::new())),
            _ if model.can_encode_text() => Some(Prompt::Text(String::new())),
            _ => None,
        })
    }

    /// Checks the request against `model` (and that its files exist) before any work starts.
    pub fn validate(&self, model: &ModelSpec) -> Result<(), RequestError> {
        request::check(model, &self.params, &self.plan, self.image.is_some())?;
        let negative = self.negative_prompt(model);
        let fields = [
            (Field::Prompt, Field::PromptEmbeds, Some(&self.prompt)),
            (Field::NegativePrompt, Field::NegativePromptEmbeds, negative.as_ref()),
        ];
        for (field, embeds_field, prompt) in fields {
            match prompt {
                Some(Prompt::Text(_)) if !model.can_encode_text() => {
                    return Err(RequestError::new(
                        field,
                        format!(
                            "prompt text needs the model's text_encoder/ and tokenizer/, which {} lacks: add them (the diffusers folder has them) or give prompt embeddings",
                            model.root.display()
                        ),
                    ))
                }
                Some(Prompt::Embeds(path)) => must_exist(embeds_field, path)?,
                _ => {}
            }
        }
        if self.params.cfg() && negative.is_none() {
            return Err(RequestError::new(
                Field::NegativePrompt,
                "«guidance» above 1 runs classifier-free guidance, which needs a negative prompt («negative-prompt» or «negative-prompt-embeds»); or set «guidance» 1",
            ));
        }
        if let Some(image) = &self.image {
            must_exist(Field::Image, image)?;
        }
        if let Some(latents) = &self.latents {
            must_exist(Field::Latents, latents)?;
        }
        if let Some(out) = &self.output {
            let kind = OutputKind::of(&out.path).map_err(|e| RequestError::new(Field::Output, format!("«out» {e}")))?;
            let parent = match kind {
                OutputKind::PngFrames => out.path.parent().and_then(Path::parent),
                _ => out.path.parent(),
            };
            if let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                return Err(RequestError::new(
                    Field::Output,
                    format!("«out» {}: the folder {} does not exist", out.path.display(), dir.display()),
                ));
            }
            if let Some(fps) = out.fps.filter(|f| !f.is_finite() || *f <= 0.0) {
                return Err(RequestError::new(Field::Output, format!("fps {fps} must be a positive number")));
            }
            if !self.decode {
                return Err(RequestError::new(Field::Output, "a denoise-only run makes no video to write to «out»"));
            }
        }
        Ok(())
    }
}

fn must_exist(field: Field, path: &Path) -> Result<(), RequestError> {
    if path.is_file() {
        return Ok(());
    }
    Err(RequestError::new(field, format!("«{}» {}: no such file", field.key(), path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> (PathBuf, ModelSpec) {
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline"));
        let spec = ModelSpec::from_path(&root).unwrap();
        (root, spec)
    }

    fn params() -> GenerateParams {
        GenerateParams {
            height: 96,
            width: 128,
            frames: 9,
            steps: 2,
            guidance: 5.0,
            guidance_2: None,
            shift: None,
            seed: 0,
            scheduler: None,
            sigmas: None,
        }
    }

    #[test]
    fn negative_defaults_follow_one_rule() {
        let (root, spec) = golden();
        let mut r = GenerationRequest::new(&root, Prompt::StandIn("fox".into()), params());
        assert_eq!(r.negative_prompt(&spec), Some(Prompt::StandIn(String::new())));
        r.prompt = Prompt::Embeds(root.join("inputs.safetensors"));
        assert_eq!(r.negative_prompt(&spec), None, "no text encoder to encode \"\" with");
        r.params.guidance = 1.0;
        r.negative = Some(Prompt::Text("blurry".into()));
        assert_eq!(r.negative_prompt(&spec), None, "no CFG, no negative branch");
    }

    #[test]
    fn validation_names_the_field_to_fix() {
        let (root, spec) = golden();
        let ok = GenerationRequest::new(&root, Prompt::StandIn("fox".into()), params());
        ok.validate(&spec).unwrap();
        let text = GenerationRequest { prompt: Prompt::Text("fox".into()), ..ok.clone() };
        let e = text.validate(&spec).unwrap_err();
        assert_eq!(e.field, Field::Prompt);
        assert!(e.to_string().contains("text_encoder/ and tokenizer/"), "{e}");
        let embeds = GenerationRequest { prompt: Prompt::Embeds(root.join("inputs.safetensors")), ..ok.clone() };
        let e = embeds.validate(&spec).unwrap_err();
        assert_eq!(e.field, Field::NegativePrompt);
        assert!(e.cli().contains("--negative-prompt"), "{}", e.cli());
        let missing = GenerationRequest { negative: Some(Prompt::Embeds("".into())), ..embeds };
        assert_eq!(missing.validate(&spec).unwrap_err().cli(), "--negative-prompt-embeds : no such file");
        let out = GenerationRequest {
            output: Some(Output { path: "/nonexistent/dir/x.mp4".into(), fps: None, latents: None }),
            ..ok.clone()
        };
        assert!(out.validate(&spec).unwrap_err().to_string().contains("does not exist"));
        let image = GenerationRequest { image: Some(root.join("nope.png")), ..ok };
        assert_eq!(
            image.validate(&spec).unwrap_err().cli(),
            format!("--image {}: no such file", root.join("nope.png").display())
        );
    }
}
