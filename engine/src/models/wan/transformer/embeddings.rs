//! Input embeddings of the Wan DiT: the patch embedding, the sinusoidal timestep embedding with its
//! MLPs, the text projection and the optional Wan2.1 CLIP image embedder (diffusers
//! `WanTimeTextImageEmbedding`, DIT 308-351, and `embeddings.py` `Timesteps`/`TimestepEmbedding`/
//! `PixArtAlphaTextProjection`).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::config::Config;
use super::norm::Fp32LayerNorm;

/// `Conv3d(in, D, kernel = stride = patch)` as what it is: a linear map on each patch flattened
/// channel-major (`c·pt·ph·pw + t·ph·pw + h·pw + w`), the layout of the conv weight.
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    /// `[D, C, pt, ph, pw]`, reshaped to `[D, C·pt·ph·pw]` per forward (a view for real weights;
    /// doing it at build time would copy the zero-stride tensors of a recording build).
    weight: Tensor,
    bias: Tensor,
    patch: [usize; 3],
    in_channels: usize,
    dim: usize,
}

impl PatchEmbedding {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let [pt, ph, pw] = cfg.patch_size;
        let dim = cfg.inner_dim();
        Ok(Self {
            weight: vb.get((dim, cfg.in_channels, pt, ph, pw), "weight")?,
            bias: vb.get(dim, "bias")?,
            patch: cfg.patch_size,
            in_channels: cfg.in_channels,
            dim,
        })
    }

    /// Patched grid of a latent `(B, C, F, H, W)`, checking that the patch divides it.
    pub fn grid(&self, xs: &Tensor) -> Result<(usize, usize, usize)> {
        let (_, c, f, h, w) = xs.dims5()?;
        let [pt, ph, pw] = self.patch;
        if c != self.in_channels || f % pt != 0 || h % ph != 0 || w % pw != 0 {
            candle_core::bail!(
                "transformer input {:?} must be (B, {}, F, H, W) with F, H, W multiples of the patch {:?}",
                xs.shape(),
                self.in_channels,
                self.patch
            );
        }
        Ok((f / pt, h / ph, w / pw))
    }

    /// `(B, C, F, H, W)` → tokens `(B, L, D)`, token index `f·(H'W') + h·W' + w`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (nf, nh, nw) = self.grid(xs)?;
        let (b, c, ..) = xs.dims5()?;
        let [pt, ph, pw] = self.patch;
        let patches = xs
            .reshape(vec![b, c, nf, pt, nh, ph, nw, pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])? // (b, f, h, w, c, pt, ph, pw)
            .reshape((b, nf * nh * nw, c * pt * ph * pw))?;
        let weight = self.weight.reshape((self.dim, c * pt * ph * pw))?;
        Linear::new(weight, Some(self.bias.clone())).forward(&patches)
    }
}

/// diffusers `get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)`:
/// `[cos(t·f_i), sin(t·f_i)]` with `f_i = exp(−ln(10000)·i/half)`, in f32. `t` is `(N,)`; returns
/// `(N, dim)` (an odd `dim` gets a zero last column, as diffusers pads).
pub fn timestep_sinusoid(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = t.dims1()?;
    let half = dim / 2;
    // torch evaluates `exp(f32(−ln 1e4)·i / half)` in f32; the f64 evaluation rounded once to f32
    // is the correctly rounded value of the same expression.
    let neg_ln = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|i| (((neg_ln * i as f32) / half as f32) as f64).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.reshape((n, 1))?.broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb = Tensor::cat(&[emb, Tensor::zeros((n, 1), DType::F32, t.device())?], 1)?;
    }
    Ok(emb)
}

/// `TimestepEmbedding`: `linear_2(SiLU(linear_1(x)))`, kept in f32 (`_keep_in_fp32_modules`).
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(in_dim: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.set_dtype(DType::F32);
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.to_dtype(DType::F32)?.apply(&self.linear_1)?.silu()?.apply(&self.linear_2)
    }
}

/// `PixArtAlphaTextProjection(act_fn="gelu_tanh")`: `linear_2(GELU_tanh(linear_1(x)))`.
#[derive(Debug, Clone)]
pub struct TextProjection {
    linear_1: Linear,
    linear_2: Linear,
}

impl TextProjection {
    pub fn new(in_dim: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TextProjection {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // candle's `gelu` is the tanh approximation, torch's `approximate="tanh"`.
        xs.apply(&self.linear_1)?.gelu()?.apply(&self.linear_2)
    }
}

/// Wan2.1 I2V `WanImageEmbedding`: FP32LayerNorm → Linear → exact GELU → Linear → FP32LayerNorm
/// on CLIP features (norms with torch's default eps 1e-5), plus the FLF2V position embedding.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    norm1: Fp32LayerNorm,
    proj: Linear,
    out: Linear,
    norm2: Fp32LayerNorm,
    pos_embed: Option<Tensor>,
}

impl ImageEmbedding {
    const EPS: f64 = 1e-5;

    pub fn new(in_dim: usize, dim: usize, pos_embed_seq_len: Option<usize>, vb: VarBuilder) -> Result<Self> {
        let pos_embed = match pos_embed_seq_len {
            Some(n) => Some(vb.get((1, n, in_dim), "pos_embed")?),
            None => None,
        };
        Ok(Self {
            norm1: Fp32LayerNorm::affine(in_dim, Self::EPS, vb.pp("norm1"))?,
            proj: candle_nn::linear(in_dim, in_dim, vb.pp("ff").pp("net").pp("0").pp("proj"))?,
            out: candle_nn::linear(in_dim, dim, vb.pp("ff").pp("net").pp("2"))?,
            norm2: Fp32LayerNorm::affine(dim, Self::EPS, vb.pp("norm2"))?,
            pos_embed,
        })
    }
}

impl Module for ImageEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = match &self.pos_embed {
            Some(pos) => {
                // FLF2V: first and last frame features side by side, `view(-1, 2·L, C)`.
                let (b, l, c) = xs.dims3()?;
                if b % 2 != 0 {
                    candle_core::bail!("image embedder with pos_embed needs an even number of feature sets, got {b}");
                }
                xs.reshape((b / 2, 2 * l, c))?.broadcast_add(&pos.to_dtype(dtype)?)?
            }
            None => xs.clone(),
        };
        let ys = self.norm1.forward(&xs)?.to_dtype(dtype)?;
        let ys = ys.apply(&self.proj)?.gelu_erf()?.apply(&self.out)?;
        self.norm2.forward(&ys)?.to_dtype(dtype)
    }
}

/// diffusers `WanTimeTextImageEmbedding`.
#[derive(Debug, Clone)]
pub struct ConditionEmbedder {
    time_embedder: TimestepEmbedding,
    time_proj: Linear,
    text_embedder: TextProjection,
    image_embedder: Option<ImageEmbedding>,
    freq_dim: usize,
}

impl ConditionEmbedder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let image_embedder = match cfg.image_dim {
            Some(img) => Some(ImageEmbedding::new(img, dim, cfg.pos_embed_seq_len, vb.pp("image_embedder"))?),
            None => None,
        };
        Ok(Self {
            time_embedder: TimestepEmbedding::new(cfg.freq_dim, dim, vb.pp("time_embedder"))?,
            time_proj: candle_nn::linear(dim, 6 * dim, vb.pp("time_proj"))?,
            text_embedder: TextProjection::new(cfg.text_dim, dim, vb.pp("text_embedder"))?,
            image_embedder,
            freq_dim: cfg.freq_dim,
        })
    }

    /// Timesteps `(N,)` → `(temb (N, D), time_proj(SiLU(temb)) (N, 6D))` in `dtype`. The MLP runs in
    /// f32 and `temb` is cast to the run dtype before `time_proj` (diffusers' `type_as`).
    pub fn time(&self, t: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let temb = self.time_embedder.forward(&timestep_sinusoid(t, self.freq_dim)?)?.to_dtype(dtype)?;
        let proj = temb.silu()?.apply(&self.time_proj)?;
        Ok((temb, proj))
    }

    pub fn text(&self, xs: &Tensor) -> Result<Tensor> {
        self.text_embedder.forward(xs)
    }

    pub fn image(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        Ok(match &self.image_embedder {
            Some(e) => Some(e.forward(xs)?),
            None => None,
        })
    }

    pub fn has_image_branch(&self) -> bool {
        self.image_embedder.is_some()
    }
}
