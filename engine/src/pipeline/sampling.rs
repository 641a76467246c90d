//! Free functions of the sampling loop (candle C6): initial noise, latent normalisation, the TI2V
//! per-token timesteps and the classifier-free-guidance combine.

use candle_core::{DType, Device, Result, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// Initial latents `N(0, 1)` of `shape` from `seed`.
///
/// RNG: `rand::rngs::StdRng` (ChaCha12 in rand 0.9) seeded with `seed_from_u64(seed)`, one
/// `StandardNormal` f32 per element in row-major order. It cannot reproduce torch's generator;
/// to replay a diffusers run bring its noise with `--latents`.
pub fn initial_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(data, shape, device)
}

/// Per-channel latent statistics of the VAE, as the pipelines hold them: `mean` and `1/std`
/// (diffusers computes the reciprocal in f32 and divides by it when decoding).
#[derive(Debug, Clone)]
pub struct LatentStats {
    mean: Tensor,
    inv_std: Tensor,
}

impl LatentStats {
    pub fn new(mean: &[f64], std: &[f64], device: &Device) -> Result<Self> {
        let z = mean.len();
        let mean: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        let inv_std: Vec<f32> = std.iter().map(|&v| 1.0 / v as f32).collect();
        Ok(Self {
            mean: Tensor::from_vec(mean, (1, z, 1, 1, 1), device)?,
            inv_std: Tensor::from_vec(inv_std, (1, z, 1, 1, 1), device)?,
        })
    }

    /// `(x − mean) · (1/std)`: VAE posterior mean → diffusion latent space.
    pub fn normalize(&self, xs: &Tensor) -> Result<Tensor> {
        xs.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)
    }

    pub fn device(&self) -> &Device {
        self.mean.device()
    }

    /// `x / (1/std) + mean`: diffusion latents → VAE latents.
    pub fn denormalize(&self, xs: &Tensor) -> Result<Tensor> {
        xs.broadcast_div(&self.inv_std)?.broadcast_add(&self.mean)
    }
}

/// TI2V `expand_timesteps`: `(mask[:, ::2, ::2] · t).flatten()` as `(1, L)`, where `first_frame_zero`
/// sets latent frame 0's tokens to 0 (image-to-video) and every other token to `t`.
pub fn per_token_timesteps(
    t: f32,
    (frames, h, w): (usize, usize, usize),
    patch: (usize, usize),
    first_frame_zero: bool,
    device: &Device,
) -> Result<Tensor> {
    let per_frame = h.div_ceil(patch.0) * w.div_ceil(patch.1);
    let data: Vec<f32> = (0..frames)
        .flat_map(|f| std::iter::repeat_n(if first_frame_zero && f == 0 { 0.0 } else { t }, per_frame))
        .collect();
    Tensor::from_vec(data, (1, frames * per_frame), device)
}

/// `uncond + g · (cond − uncond)`.
pub fn guidance(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    uncond + ((cond - uncond)? * scale)?
}

/// `(x/2 + 0.5).clamp(0, 1)` and `(B, C, F, H, W)` → `(B, F, C, H, W)`: diffusers' `output_type="pt"`.
pub fn video_to_unit_range(video: &Tensor) -> Result<Tensor> {
    let v = ((video.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    v.permute((0, 2, 1, 3, 4))?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_seeded_and_standard() {
        let a = initial_noise(7, &[1, 4, 2, 8, 8], &Device::Cpu).unwrap();
        let b = initial_noise(7, &[1, 4, 2, 8, 8], &Device::Cpu).unwrap();
        let c = initial_noise(8, &[1, 4, 2, 8, 8], &Device::Cpu).unwrap();
        let diff =
            |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&a, &b), 0.0);
        assert!(diff(&a, &c) > 1.0);
        let var = a.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((0.7..1.3).contains(&var), "variance {var}");
    }

    #[test]
    fn first_frame_tokens_get_timestep_zero() {
        let ts = per_token_timesteps(500.0, (2, 4, 6), (2, 2), true, &Device::Cpu).unwrap();
        let v = ts.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v.len(), 12);
        assert!(v[..6].iter().all(|&x| x == 0.0) && v[6..].iter().all(|&x| x == 500.0));
    }
}
