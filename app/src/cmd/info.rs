//! `tessera info FILE`: the generation settings a Tessera MP4 or PNG carries, as a summary and
//! the `tessera generate` flags that run it again (or the raw JSON with `--json`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tessera_engine::api::{Prompt, Settings};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// An MP4 or PNG written by Tessera.
    pub file: PathBuf,
    /// Print the settings JSON as stored.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let s = Settings::read(&a.file)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print!("{}", summary(&s));
    Ok(())
}

/// The settings for people: one fact per line, then the command line.
pub fn summary(s: &Settings) -> String {
    let p = &s.params;
    let mut out = format!("written by {}\nmodel      {}\n", s.tessera, s.model.display());
    for f in &s.files {
        out += &format!("  {:<13} {} ({} bytes, hash {})\n", f.component, f.path.display(), f.bytes, f.hash);
    }
    for l in &s.model_files.loras {
        out += &format!("lora       {l}\n");
    }
    out += &format!("prompt     {}\n", describe(&s.prompt));
    if let Some(n) = &s.negative_prompt {
        out += &format!("negative   {}\n", describe(n));
    }
    if let Some(image) = &s.image {
        out += &format!("image      {}\n", image.display());
    }
    if let Some(latents) = &s.latents {
        out += &format!("noise      {}\n", latents.display());
    }
    out += &format!("size       {}×{}, {} frames", p.width, p.height, p.frames);
    if let Some(fps) = s.fps {
        out += &format!(" at {fps} fps");
    }
    out += &format!("\nsteps      {}", p.steps);
    if let Some(k) = p.scheduler {
        out += &format!(", scheduler {}", k.name());
    }
    if let Some(sigmas) = &p.sigmas {
        out += &format!(", sigmas {}", join(sigmas));
    }
    if let Some(shift) = p.shift {
        out += &format!(", shift {shift}");
    }
    out += &format!("\nguidance   {}", p.guidance);
    if let Some(g2) = p.guidance_2 {
        out += &format!(" (low-noise expert {g2})");
    }
    let plan = &s.plan;
    out += &format!(
        "\nseed       {}\nplan       ranks {} · ulysses {} · cfg-parallel {} · fsdp {} · vae {}×{} · text encoder {}\n",
        p.seed,
        plan.ranks,
        plan.ulysses,
        plan.cfg_parallel,
        plan.fsdp,
        plan.vae_parallel,
        plan.vae_mode,
        plan.text_encoder
    );
    out += &format!("\nrun again:\n  {}\n", command_line(s));
    out
}

fn describe(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => format!("{t:?}"),
        Prompt::Embeds(path) => format!("embeddings {}", path.display()),
        Prompt::StandIn(t) => format!("{t:?} (stand-in embeddings of the former random-weights demo)"),
    }
}

fn join(v: &[f64]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

/// Single-quotes `s` for a POSIX shell.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./,:=@".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `tessera generate` flags of the settings (without `--out`).
pub fn command_line(s: &Settings) -> String {
    let p = &s.params;
    let mut args: Vec<String> = vec!["tessera generate".into()];
    if !s.model.as_os_str().is_empty() {
        args.push(format!("--model {}", quote(&s.model.to_string_lossy())));
    }
    let f = &s.model_files;
    let files =
        [("transformer", &f.transformer), ("transformer-2", &f.transformer_2), ("vae", &f.vae), ("config", &f.config)];
    for (flag, path) in files {
        if let Some(path) = path {
            args.push(format!("--{flag} {}", quote(&path.to_string_lossy())));
        }
    }
    for l in &f.loras {
        args.push(format!("--lora {}", quote(&l.to_string())));
    }
    let prompt = |flag: &str, embeds_flag: &str, prompt: &Prompt| match prompt {
        Prompt::Text(t) | Prompt::StandIn(t) => format!("--{flag} {}", quote(t)),
        Prompt::Embeds(path) => format!("--{embeds_flag} {}", quote(&path.to_string_lossy())),
    };
    args.push(prompt("prompt", "prompt-embeds", &s.prompt));
    if let Some(n) = &s.negative_prompt {
        args.push(prompt("negative-prompt", "negative-prompt-embeds", n));
    }
    if let Some(image) = &s.image {
        args.push(format!("--image {}", quote(&image.to_string_lossy())));
    }
    if let Some(latents) = &s.latents {
        args.push(format!("--latents {}", quote(&latents.to_string_lossy())));
    }
    args.push(format!("--width {} --height {} --frames {} --steps {}", p.width, p.height, p.frames, p.steps));
    args.push(format!("--guidance {}", p.guidance));
    if let Some(g2) = p.guidance_2 {
        args.push(format!("--guidance-2 {g2}"));
    }
    if let Some(shift) = p.shift {
        args.push(format!("--shift {shift}"));
    }
    if let Some(k) = p.scheduler {
        args.push(format!("--scheduler {}", k.name()));
    }
    if let Some(sigmas) = &p.sigmas {
        args.push(format!("--sigmas {}", join(sigmas)));
    }
    args.push(format!("--seed {}", p.seed));
    let plan = &s.plan;
    args.push(format!(
        "--ranks {} --ulysses {} --cfg-parallel {} --fsdp {} --vae-parallel {} --vae-mode {} --text-encoder-on {}",
        plan.ranks, plan.ulysses, plan.cfg_parallel, plan.fsdp, plan.vae_parallel, plan.vae_mode, plan.text_encoder
    ));
    if let Some(t) = plan.vae_tiling {
        let [a, b, c, d] = t.as_array();
        args.push(format!("--tiling {a},{b},{c},{d}"));
    }
    if let Some(fps) = s.fps {
        args.push(format!("--fps {fps}"));
    }
    args.join(" ")
}
