//! `SiglipVisionModel` without its pooling head: patch embedding + learned positions, pre-norm
//! encoder layers, `post_layernorm`; returns `last_hidden_state` (what HunyuanVideo 1.5's I2V
//! pipeline feeds its transformer). Exact to transformers 5.24 `modeling_siglip.py` (eager path).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Embedding, LayerNorm, Linear, VarBuilder};

use super::config::Config;

/// `embeddings`: `patch_embedding` (conv, kernel = stride = patch, no padding) and
/// `position_embedding` (one row per patch).
#[derive(Debug, Clone)]
struct Embeddings {
    patch_embedding: Conv2d,
    position_embedding: Embedding,
    num_patches: usize,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let conv = Conv2dConfig { stride: cfg.patch_size, ..Default::default() };
        let patch_embedding =
            candle_nn::conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, conv, vb.pp("patch_embedding"))?;
        let n = cfg.num_patches();
        let position_embedding = candle_nn::embedding(n, cfg.hidden_size, vb.pp("position_embedding"))?;
        Ok(Self { patch_embedding, position_embedding, num_patches: n })
    }

    /// `(b, c, S, S)` → `(b, patches, hidden)`.
    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.patch_embedding.forward(pixel_values)?; // (b, d, p, p)
        let (b, d, ph, pw) = x.dims4()?;
        if ph * pw != self.num_patches {
            candle_core::bail!(
                "pixel values {:?} give {ph}×{pw} patches, the position table has {} (resize to image_size first)",
                pixel_values.dims(),
                self.num_patches
            )
        }
        let x = x.reshape((b, d, ph * pw))?.transpose(1, 2)?;
        x.broadcast_add(&self.position_embedding.embeddings().unsqueeze(0)?)
    }
}

/// `self_attn`: multi-head attention with biases, scaled by `head_dim^-0.5`, softmax in f32.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let split = |p: &Linear| -> Result<Tensor> {
            p.forward(xs)?.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (split(&self.q_proj)?, split(&self.k_proj)?, split(&self.v_proj)?);
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let w = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let ctx = w.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.forward(&ctx)
    }
}

/// `encoder.layers.{i}`: `x + attn(ln1 x)`, then `x + fc2(gelu_tanh(fc1(ln2 x)))`.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    exact_gelu: bool,
}

impl EncoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(d, eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: candle_nn::layer_norm(d, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("mlp").pp("fc2"))?,
            exact_gelu: cfg.hidden_act == "gelu",
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.self_attn.forward(&self.layer_norm1.forward(xs)?)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = if self.exact_gelu { h.gelu_erf()? } else { h.gelu()? };
        xs + self.fc2.forward(&h)?
    }
}

/// The vision tower (`SiglipVisionTransformer` minus `head`).
#[derive(Debug, Clone)]
pub struct SiglipVisionModel {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    cfg: Config,
}

impl SiglipVisionModel {
    /// `vb` at the tower's root: `embeddings.*`, `encoder.layers.{i}.*`, `post_layernorm.*` (the
    /// caller strips an older checkpoint's `vision_model.` prefix). `head.*` is not read.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp("encoder").pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
            post_layernorm: candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &candle_core::Device {
        self.post_layernorm.weight().device()
    }

    /// `last_hidden_state` `(b, patches, hidden)` for `pixel_values` `(b, 3, S, S)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        if c != self.cfg.num_channels {
            candle_core::bail!("pixel values have {c} channels, the image encoder takes {}", self.cfg.num_channels)
        }
        if h != w || h != self.cfg.image_size {
            candle_core::bail!("pixel values are {h}×{w}, the image encoder takes {0}×{0}", self.cfg.image_size)
        }
        let mut xs = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        self.post_layernorm.forward(&xs)
    }
}
