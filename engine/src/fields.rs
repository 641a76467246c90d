//! The fields of a generation request as people see them: the CLI names its flags (`--height`),
//! the studio names its labels ("Height"). Engine messages about a request are written once, as
//! templates whose field references are `«key»` (e.g. `"«height» 200 is not a multiple of 32"`),
//! and rendered for one [`Audience`] where they reach a person.

/// A field of a generation request (and of its parallel plan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Model,
    Prompt,
    NegativePrompt,
    PromptEmbeds,
    NegativePromptEmbeds,
    Image,
    Height,
    Width,
    Frames,
    Steps,
    Guidance,
    Guidance2,
    Shift,
    Scheduler,
    Sigmas,
    Latents,
    Output,
    Device,
    Ranks,
    Ulysses,
    CfgParallel,
    Fsdp,
    VaeParallel,
    VaeMode,
    Tiling,
    /// Where UMT5 runs (host or the workers).
    TextEncoderOn,
    Transformer,
    Transformer2,
    Vae,
    /// A UMT5 text-encoder file.
    TextEncoder,
    Tokenizer,
    Config,
    Lora,
}

/// Who reads a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// `tessera` on a terminal: fields are flags (`--cfg-parallel`).
    Cli,
    /// The studio: fields are the labels of its form ("CFG parallel").
    Gui,
}

impl Field {
    pub const ALL: [Field; 33] = [
        Field::Model,
        Field::Prompt,
        Field::NegativePrompt,
        Field::PromptEmbeds,
        Field::NegativePromptEmbeds,
        Field::Image,
        Field::Height,
        Field::Width,
        Field::Frames,
        Field::Steps,
        Field::Guidance,
        Field::Guidance2,
        Field::Shift,
        Field::Scheduler,
        Field::Sigmas,
        Field::Latents,
        Field::Output,
        Field::Device,
        Field::Ranks,
        Field::Ulysses,
        Field::CfgParallel,
        Field::Fsdp,
        Field::VaeParallel,
        Field::VaeMode,
        Field::Tiling,
        Field::TextEncoderOn,
        Field::Transformer,
        Field::Transformer2,
        Field::Vae,
        Field::TextEncoder,
        Field::Tokenizer,
        Field::Config,
        Field::Lora,
    ];

    /// The key used in templates (`«key»`), which is also the CLI flag without its dashes.
    pub fn key(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Prompt => "prompt",
            Field::NegativePrompt => "negative-prompt",
            Field::PromptEmbeds => "prompt-embeds",
            Field::NegativePromptEmbeds => "negative-prompt-embeds",
            Field::Image => "image",
            Field::Height => "height",
            Field::Width => "width",
            Field::Frames => "frames",
            Field::Steps => "steps",
            Field::Guidance => "guidance",
            Field::Guidance2 => "guidance-2",
            Field::Shift => "shift",
            Field::Scheduler => "scheduler",
            Field::Sigmas => "sigmas",
            Field::Latents => "latents",
            Field::Output => "out",
            Field::Device => "device",
            Field::Ranks => "ranks",
            Field::Ulysses => "ulysses",
            Field::CfgParallel => "cfg-parallel",
            Field::Fsdp => "fsdp",
            Field::VaeParallel => "vae-parallel",
            Field::VaeMode => "vae-mode",
            Field::Tiling => "tiling",
            Field::TextEncoderOn => "text-encoder-on",
            Field::Transformer => "transformer",
            Field::Transformer2 => "transformer-2",
            Field::Vae => "vae",
            Field::TextEncoder => "text-encoder",
            Field::Tokenizer => "tokenizer",
            Field::Config => "config",
            Field::Lora => "lora",
        }
    }

    /// The studio's label of the field.
    pub fn label(self) -> &'static str {
        match self {
            Field::Model => "Model",
            Field::Prompt => "Prompt",
            Field::NegativePrompt => "Negative prompt",
            Field::PromptEmbeds => "Prompt embeddings",
            Field::NegativePromptEmbeds => "Negative prompt embeddings",
            Field::Image => "Image",
            Field::Height => "Height",
            Field::Width => "Width",
            Field::Frames => "Frames",
            Field::Steps => "Steps",
            Field::Guidance => "Guidance",
            Field::Guidance2 => "Guidance 2",
            Field::Shift => "Shift",
            Field::Scheduler => "Scheduler",
            Field::Sigmas => "Sigmas",
            Field::Latents => "Latents",
            Field::Output => "Output",
            Field::Device => "Device",
            Field::Ranks => "Ranks",
            Field::Ulysses => "Ulysses",
            Field::CfgParallel => "CFG parallel",
            Field::Fsdp => "FSDP",
            Field::VaeParallel => "VAE parallel",
            Field::VaeMode => "VAE mode",
            Field::Tiling => "Tiling",
            Field::TextEncoderOn => "Text encoder on",
            Field::Transformer => "Transformer file",
            Field::Transformer2 => "Transformer 2 file",
            Field::Vae => "VAE file",
            Field::TextEncoder => "Text encoder file",
            Field::Tokenizer => "Tokenizer",
            Field::Config => "Config",
            Field::Lora => "LoRAs",
        }
    }

    pub fn name(self, audience: Audience) -> String {
        match audience {
            Audience::Cli => format!("--{}", self.key()),
            Audience::Gui => self.label().to_string(),
        }
    }
}

/// Replaces every `«key»` of `template` with the field's name for `audience`. Unknown keys are
/// left as they are (without the marks), so a typo shows instead of vanishing.
pub fn render(template: &str, audience: Audience) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('«') {
        out.push_str(&rest[..open]);
        let after = &rest[open + '«'.len_utf8()..];
        let Some(close) = after.find('»') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let key = &after[..close];
        match Field::ALL.iter().find(|f| f.key() == key) {
            Some(f) => out.push_str(&f.name(audience)),
            None => out.push_str(key),
        }
        rest = &after[close + '»'.len_utf8()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_per_audience() {
        let t = "«ulysses» 3 × «cfg-parallel» 2 ≠ «ranks» 4";
        assert_eq!(render(t, Audience::Cli), "--ulysses 3 × --cfg-parallel 2 ≠ --ranks 4");
        assert_eq!(render(t, Audience::Gui), "Ulysses 3 × CFG parallel 2 ≠ Ranks 4");
        assert_eq!(render("no fields", Audience::Gui), "no fields");
        assert_eq!(render("«nope» x «height", Audience::Cli), "nope x «height");
    }

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = Field::ALL.iter().map(|f| f.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Field::ALL.len());
    }
}
