//! The two normalisations of the Wan DiT, with diffusers' dtypes: `FP32LayerNorm` (LayerNorm
//! computed in f32 whatever the run dtype) and `torch.nn.RMSNorm` over the full inner dim (QK norm
//! across heads).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// diffusers `FP32LayerNorm`: the input is upcast to f32, normalised, and (when affine) scaled and
/// shifted by f32 parameters. Returns f32; callers cast where diffusers does (`.type_as`).
#[derive(Debug, Clone)]
pub struct Fp32LayerNorm {
    affine: Option<(Tensor, Tensor)>,
    eps: f64,
}

impl Fp32LayerNorm {
    /// `elementwise_affine=False`: nothing to load.
    pub fn no_affine(eps: f64) -> Self {
        Self { affine: None, eps }
    }

    /// `elementwise_affine=True`: `weight` and `bias` of width `dim`, kept in f32 (diffusers'
    /// `_keep_in_fp32_modules` holds `norm1/2/3` in f32 under bf16 loading).
    pub fn affine(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let vb = vb.set_dtype(DType::F32);
        Ok(Self { affine: Some((vb.get(dim, "weight")?, vb.get(dim, "bias")?)), eps })
    }

    /// Normalises the last dim in f32. Two-pass mean/variance (as torch's row moments are stable):
    /// the residual stream of large DiTs has big per-token means, where E[x²]−E[x]² in f32 is not.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.to_dtype(DType::F32)?;
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let ys = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        match &self.affine {
            None => Ok(ys),
            Some((w, b)) => ys.broadcast_mul(w)?.broadcast_add(b),
        }
    }
}

/// `torch.nn.RMSNorm(D)` with a learned weight, applied to the projected q/k over all heads at
/// once (before the head split). Normalises in f32, casts back to the input dtype, then multiplies
/// by the weight (torch's `rms_norm` order).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, eps })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        if dtype == DType::F32 && xs.is_contiguous() {
            // Fused kernel: same math in f32 (x / sqrt(mean(x²) + eps) · w).
            return candle_nn::ops::rms_norm(xs, &self.weight.to_dtype(DType::F32)?, self.eps as f32);
        }
        let x32 = xs.to_dtype(DType::F32)?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(ms + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}
