//! DiT forward micro-benchmark on random weights: wall time of one `forward` for a latent shape,
//! for comparing token counts, dtypes and attention block sizes (and against diffusers on the same
//! config).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::attention::ChunkedAttention;
use super::config::Config;
use super::model::WanTransformer3DModel;

/// What one benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Patch tokens per forward.
    pub tokens: usize,
    /// Mean seconds per forward over the timed runs (after one warm-up run).
    pub secs_per_forward: f64,
    /// Fastest timed run.
    pub min_secs: f64,
}

/// Times `iters` forwards of a randomly initialised model with config `cfg` on latents
/// `(1, in_channels, frames, height, width)` and `text_len` text tokens. Allocates the full model:
/// cut `cfg.num_layers` for large widths.
pub fn bench_forward(
    cfg: &Config,
    latent: (usize, usize, usize),
    text_len: usize,
    iters: usize,
    attention: ChunkedAttention,
    dtype: DType,
    device: &Device,
) -> Result<BenchResult> {
    let varmap = VarMap::new();
    let model =
        WanTransformer3DModel::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?.with_attention(attention);
    let (f, h, w) = latent;
    let xs = Tensor::randn(0f32, 1., (1, cfg.in_channels, f, h, w), device)?;
    let text = Tensor::randn(0f32, 1., (1, text_len, cfg.text_dim), device)?;
    let t = Tensor::new(&[500f32], device)?;
    let [pt, ph, pw] = cfg.patch_size;
    let tokens = (f / pt) * (h / ph) * (w / pw);
    let run = || -> Result<f64> {
        let start = Instant::now();
        let out = model.forward(&xs, &t, &text)?;
        device.synchronize()?;
        drop(out);
        Ok(start.elapsed().as_secs_f64())
    };
    run()?;
    let times = (0..iters.max(1)).map(|_| run()).collect::<Result<Vec<_>>>()?;
    let secs_per_forward = times.iter().sum::<f64>() / times.len() as f64;
    let min_secs = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(BenchResult { tokens, secs_per_forward, min_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_on_a_tiny_model() -> Result<()> {
        let cfg = Config {
            num_attention_heads: 2,
            attention_head_dim: 12,
            in_channels: 4,
            out_channels: Some(4),
            text_dim: 8,
            freq_dim: 16,
            ffn_dim: 32,
            num_layers: 1,
            ..Config::default()
        };
        let r = bench_forward(&cfg, (2, 4, 4), 3, 1, ChunkedAttention::default(), DType::F32, &Device::Cpu)?;
        assert_eq!(r.tokens, 8);
        assert!(r.secs_per_forward > 0.0 && r.min_secs <= r.secs_per_forward);
        Ok(())
    }
}
