//! Errors as one line: the context chain joined with `: `, each cause cut to its first line (candle
//! errors carry multi-line backtraces when `RUST_BACKTRACE` is set; users need the message). Engine
//! messages about request fields (`«height»`) are rendered with the CLI's flag names here.

use tessera_engine::api::{render, Audience};

pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_string();
        if first.is_empty() || parts.iter().any(|p| p.contains(&first)) {
            continue;
        }
        parts.push(first);
    }
    render(&parts.join(": "), Audience::Cli)
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_context_and_drops_backtraces() {
        let inner = anyhow::anyhow!("latents have 5 channels\n   0: backtrace frame");
        let err = inner.context("decoding latents.safetensors");
        assert_eq!(super::one_line(&err), "decoding latents.safetensors: latents have 5 channels");
    }

    #[test]
    fn engine_field_templates_become_flags() {
        let err =
            anyhow::anyhow!("«ulysses» 5 does not divide the model's 24 attention heads; valid up to «ranks»: [1, 2]");
        assert_eq!(
            super::one_line(&err),
            "--ulysses 5 does not divide the model's 24 attention heads; valid up to --ranks: [1, 2]"
        );
    }
}
