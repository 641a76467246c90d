//! One UMT5 / T5 encoder layer (`encoder.block.{i}`): pre-norm self-attention (`layer.0`) and a
//! pre-norm feed-forward (`layer.1`), each added to the residual stream.
//!
//! The residual stream is kept in f32 whatever the weights' dtype. transformers keeps `wo` in f32
//! (`_keep_in_fp32_modules = ["wo"]`), which promotes the residual to f32 after the first FFN; doing
//! it from the start is the safe reading for bf16 runs and changes nothing in f32.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::attention::{AttentionInputs, RmsNorm, UMT5Attention};
use super::config::{Activation, Config};

/// `layer.1.DenseReluDense`: `wo(act(wi_0 x) · wi_1 x)` when gated, `wo(act(wi x))` otherwise.
#[derive(Debug, Clone)]
struct FeedForward {
    wi_0: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (gated, act) = cfg.feed_forward()?;
        let (wi_0, wi_1) = if gated {
            (
                candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
                Some(candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?),
            )
        } else {
            (candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi"))?, None)
        };
        // `wo` stays f32 (see the module doc).
        let wo = candle_nn::linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo").to_dtype(DType::F32))?;
        Ok(Self { wi_0, wi_1, wo, act })
    }

    /// `xs` in the weights' dtype; the result is f32.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.wi_0.forward(xs)?;
        let h = match self.act {
            Activation::GeluTanh => h.gelu()?,
            Activation::Gelu => h.gelu_erf()?,
            Activation::Relu => h.relu()?,
            Activation::Silu => h.silu()?,
        };
        let h = match &self.wi_1 {
            Some(wi_1) => (h * wi_1.forward(xs)?)?,
            None => h,
        };
        self.wo.forward(&h.to_dtype(DType::F32)?)
    }
}

/// `encoder.block.{i}`.
#[derive(Debug, Clone)]
pub struct UMT5Block {
    attn_norm: RmsNorm,
    attention: UMT5Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
    dtype: DType,
    span: tracing::Span,
}

impl UMT5Block {
    /// `vb` is this block's prefix (`encoder.block.{i}`), so a block can be loaded on its own;
    /// `has_bias`: it holds a relative-position bias (UMT5: all; T5: block 0).
    pub fn new(cfg: &Config, has_bias: bool, vb: VarBuilder) -> Result<Self> {
        let l0 = vb.pp("layer").pp(0);
        let l1 = vb.pp("layer").pp(1);
        Ok(Self {
            attn_norm: RmsNorm::new(cfg.d_model, cfg.layer_norm_epsilon, l0.pp("layer_norm"))?,
            attention: UMT5Attention::new(cfg, has_bias, l0.pp("SelfAttention"))?,
            ff_norm: RmsNorm::new(cfg.d_model, cfg.layer_norm_epsilon, l1.pp("layer_norm"))?,
            ff: FeedForward::new(cfg, l1.pp("DenseReluDense"))?,
            dtype: vb.dtype(),
            span: tracing::span!(tracing::Level::TRACE, "umt5-block"),
        })
    }

    /// `xs`: the f32 residual stream `(b, t, d_model)`; returns the next one (f32). `shared_bias`:
    /// T5's layer-0 bias `(1, h, t, t)` for blocks without their own.
    pub fn forward(&self, xs: &Tensor, inputs: &AttentionInputs, shared_bias: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        if xs.dtype() != DType::F32 {
            candle_core::bail!("UMT5 residual stream must be f32, got {:?}", xs.dtype())
        }
        let h = self.attn_norm.forward(xs)?.to_dtype(self.dtype)?;
        let xs = (xs + self.attention.forward(&h, inputs, shared_bias)?.to_dtype(DType::F32)?)?;
        let h = self.ff_norm.forward(&xs)?.to_dtype(self.dtype)?;
        xs + self.ff.forward(&h)?
    }
}
