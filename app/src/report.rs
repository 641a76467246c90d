//! Errors as one line: the context chain joined with `: `, each cause cut to its first line (candle
//! errors carry multi-line backtraces when `RUST_BACKTRACE` is set; users need the message).

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
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_context_and_drops_backtraces() {
        let inner = anyhow::anyhow!("latents have 5 channels\n   0: backtrace frame");
        let err = inner.context("decoding latents.safetensors");
        assert_eq!(super::one_line(&err), "decoding latents.safetensors: latents have 5 channels");
    }
}
