//! `WanTransformer3DModel` (diffusers DIT 507-735): stem (patch, time, text and image embeddings,
//! RoPE), the blocks, and the output head with unpatchify.
//!
//! The forward is split where a sharded runner needs to cut it: [`WanStem::prepare`] → blocks →
//! [`WanStem::head`]. [`WanStem`] and [`WanTransformerBlock`] can be built separately from the same
//! `VarBuilder`, so blocks may be loaded one at a time.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::attention::{Attention, ChunkedAttention};
use super::block::{CrossContext, WanTransformerBlock};
use super::config::Config;
use super::embeddings::{ConditionEmbedder, PatchEmbedding};
use super::modulation::{modulation_chunks, scale_shift, TimeConditioning, TokenRuns};
use super::norm::Fp32LayerNorm;
use super::rope::{RopeTables, WanRope};
use crate::weights::{load_config, Checkpoint};

/// Everything the blocks need for one forward, for the whole sequence. A sequence shard takes
/// `tokens.narrow(1, s, n)`, `time.narrow(s, n)` and `rope.narrow(s, n)`.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Patch tokens `(B, L, D)` in the run dtype.
    pub tokens: Tensor,
    pub context: CrossContext,
    pub time: TimeConditioning,
    pub rope: RopeTables,
    /// Patched latent grid (F', H', W').
    pub grid: (usize, usize, usize),
}

/// The model minus its blocks: input embeddings, RoPE and the output head.
#[derive(Debug, Clone)]
pub struct WanStem {
    patch_embedding: PatchEmbedding,
    condition_embedder: ConditionEmbedder,
    rope: WanRope,
    norm_out: Fp32LayerNorm,
    /// `(1, 2, D)` f32: shift, scale of the output head.
    scale_shift_table: Tensor,
    proj_out: Linear,
    patch: [usize; 3],
    out_channels: usize,
    text_dim: usize,
    dtype: DType,
}

impl WanStem {
    /// Builds from the model root `vb`; the run dtype is `vb.dtype()`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        let out_channels = cfg.out_channels();
        let patch_len: usize = cfg.patch_size.iter().product();
        Ok(Self {
            patch_embedding: PatchEmbedding::new(cfg, vb.pp("patch_embedding"))?,
            condition_embedder: ConditionEmbedder::new(cfg, vb.pp("condition_embedder"))?,
            rope: WanRope::new(cfg.attention_head_dim, cfg.rope_max_seq_len)?,
            norm_out: Fp32LayerNorm::no_affine(cfg.eps),
            scale_shift_table: vb.clone().set_dtype(DType::F32).get((1, 2, dim), "scale_shift_table")?,
            proj_out: candle_nn::linear(dim, out_channels * patch_len, vb.pp("proj_out"))?,
            patch: cfg.patch_size,
            out_channels,
            text_dim: cfg.text_dim,
            dtype: vb.dtype(),
        })
    }

    /// Embeds the inputs: latents `(B, C, F, H, W)`, timestep `(B,)` (or `(1,)`) or per token
    /// `(B, L)`, text `(B, Lt, text_dim)` and, for Wan2.1 I2V, CLIP features `(B, Li, image_dim)`.
    pub fn prepare(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_image: Option<&Tensor>,
    ) -> Result<Prepared> {
        let grid = self.patch_embedding.grid(hidden_states)?;
        let (b, ..) = hidden_states.dims5()?;
        let len = grid.0 * grid.1 * grid.2;
        let (tb, tl, td) = encoder_hidden_states.dims3()?;
        if tb != b || td != self.text_dim || tl == 0 {
            candle_core::bail!(
                "encoder_hidden_states {:?} must be (B={b}, Lt, {}) (text embeddings, normally Lt = 512)",
                encoder_hidden_states.shape(),
                self.text_dim
            );
        }
        if encoder_hidden_states_image.is_some() != self.condition_embedder.has_image_branch() {
            candle_core::bail!(
                "image embeddings {} but the model {} an image branch (only Wan2.1 I2V has one)",
                if encoder_hidden_states_image.is_some() { "given" } else { "missing" },
                if self.condition_embedder.has_image_branch() { "has" } else { "has no" }
            );
        }
        let tokens = self.patch_embedding.forward(&hidden_states.to_dtype(self.dtype)?)?;
        let time = self.time_conditioning(timestep, b, len)?;
        let text = self.condition_embedder.text(&encoder_hidden_states.to_dtype(self.dtype)?)?;
        let image = match encoder_hidden_states_image {
            Some(img) => self.condition_embedder.image(&img.to_dtype(self.dtype)?)?,
            None => None,
        };
        let rope = self.rope.tables(grid, hidden_states.device())?;
        Ok(Prepared { tokens, context: CrossContext { text, image }, time, rope, grid })
    }

    /// Time embeddings, one row per run of equal timesteps (see `modulation`).
    fn time_conditioning(&self, timestep: &Tensor, b: usize, len: usize) -> Result<TimeConditioning> {
        let t = timestep.to_dtype(DType::F32)?;
        let (rows, runs) = match *t.dims() {
            [tb] if tb == b || tb == 1 => (t.reshape((tb, 1))?, TokenRuns::single(len)),
            [tb, tl] if (tb == b || tb == 1) && tl == len => {
                let (runs, starts) = TokenRuns::from_timesteps(&t.to_vec2::<f32>()?)?;
                let idx =
                    Tensor::from_vec(starts.iter().map(|&s| s as u32).collect::<Vec<_>>(), starts.len(), t.device())?;
                (t.index_select(&idx, 1)?, runs)
            }
            _ => candle_core::bail!(
                "timestep {:?} must be (B,) or per token (B, L) with B = {b} and L = {len} patch tokens",
                t.shape()
            ),
        };
        let (tb, r) = rows.dims2()?;
        let (temb, proj) = self.condition_embedder.time(&rows.flatten_all()?, self.dtype)?;
        let d = temb.dim(1)?;
        // A single timestep row serves every batch element (torch broadcasting).
        let temb = temb.reshape((tb, r, d))?.broadcast_as((b, r, d))?.contiguous()?;
        let proj = proj.reshape((tb, r, 6, d))?.broadcast_as((b, r, 6, d))?.contiguous()?;
        Ok(TimeConditioning { temb, proj, runs })
    }

    /// Output head on the block output `(B, L, D)`: [`Self::head_tokens`] then [`Self::unpatchify`].
    pub fn head(&self, xs: &Tensor, time: &TimeConditioning, grid: (usize, usize, usize)) -> Result<Tensor> {
        self.unpatchify(&self.head_tokens(xs, time)?, grid)
    }

    /// The per-token part of the output head: `LN(x)·(1 + scale) + shift` with
    /// `(shift, scale) = scale_shift_table + temb` (f32), then `proj_out`: `(B, L, D)` →
    /// `(B, L, pt·ph·pw·C_out)`. Works on any token shard whose `time` covers the same tokens.
    pub fn head_tokens(&self, xs: &Tensor, time: &TimeConditioning) -> Result<Tensor> {
        let dtype = xs.dtype();
        let m = modulation_chunks(&self.scale_shift_table, &time.temb.unsqueeze(2)?)?;
        let xs = scale_shift(&time.runs, &self.norm_out.forward(xs)?, &m[1], &m[0])?.to_dtype(dtype)?;
        self.proj_out.forward(&xs)
    }

    /// `(B, L, pt·ph·pw·C_out)` for the whole grid → `(B, C_out, F, H, W)`. `proj_out` features are
    /// ordered `(pt, ph, pw, c)`: channel-minor.
    pub fn unpatchify(&self, xs: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
        let (b, ..) = xs.dims3()?;
        let (nf, nh, nw) = grid;
        let [pt, ph, pw] = self.patch;
        xs.reshape(vec![b, nf, nh, nw, pt, ph, pw, self.out_channels])?
            .permute(vec![0, 7, 1, 4, 2, 5, 3, 6])? // (b, c, f, pt, h, ph, w, pw)
            .reshape((b, self.out_channels, nf * pt, nh * ph, nw * pw))
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// diffusers `WanTransformer3DModel`.
#[derive(Debug, Clone)]
pub struct WanTransformer3DModel {
    cfg: Config,
    stem: WanStem,
    blocks: Vec<WanTransformerBlock>,
    attention: ChunkedAttention,
}

impl WanTransformer3DModel {
    /// Builds the whole model; the run dtype is `vb.dtype()` (f32 on CPU, bf16 on CUDA), with the
    /// time embedder, modulation tables and norms in f32 as diffusers keeps them.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let stem = WanStem::new(cfg, vb.clone())?;
        let vb_blocks = vb.pp("blocks");
        let blocks =
            (0..cfg.num_layers).map(|i| WanTransformerBlock::new(cfg, vb_blocks.pp(i))).collect::<Result<_>>()?;
        Ok(Self::from_parts(cfg.clone(), stem, blocks))
    }

    /// Assembles a model from separately built parts.
    pub fn from_parts(cfg: Config, stem: WanStem, blocks: Vec<WanTransformerBlock>) -> Self {
        Self { cfg, stem, blocks, attention: ChunkedAttention::default() }
    }

    /// Loads a diffusers `transformer/` folder (single file or sharded with index.json); each
    /// tensor is converted to `dtype` as it is read.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: Config = load_config(dir).map_err(candle_core::Error::wrap)?;
        let vb = Checkpoint::open(dir).and_then(|c| c.var_builder(dtype, device)).map_err(candle_core::Error::wrap)?;
        Self::new(&cfg, vb)
    }

    /// Sets the block sizes of the chunked attention.
    pub fn with_attention(mut self, attention: ChunkedAttention) -> Self {
        self.attention = attention;
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stem(&self) -> &WanStem {
        &self.stem
    }

    pub fn blocks(&self) -> &[WanTransformerBlock] {
        &self.blocks
    }

    /// `hidden_states` `(B, C, F, H, W)`, `timestep` `(B,)` or per token `(B, L)`,
    /// `encoder_hidden_states` `(B, Lt, text_dim)` → `(B, C_out, F, H, W)` in the run dtype.
    pub fn forward(&self, hidden_states: &Tensor, timestep: &Tensor, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        self.forward_with_image(hidden_states, timestep, encoder_hidden_states, None)
    }

    /// [`Self::forward`] with Wan2.1 I2V CLIP features `(B, 257, image_dim)`. diffusers
    /// concatenates them before the text and splits at `len − 512` inside the attention; they are
    /// kept apart here, which is the same computation for the 512-token text the pipelines use.
    pub fn forward_with_image(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let p = self.stem.prepare(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)?;
        let attention = Attention { self_attn: &self.attention, cross_attn: &self.attention };
        let mut xs = p.tokens;
        for (i, block) in self.blocks.iter().enumerate() {
            let _span = tracing::debug_span!("wan_block", i).entered();
            xs = block.forward(&xs, &p.context, &p.time, &p.rope, attention)?;
        }
        self.stem.head(&xs, &p.time, p.grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(image: bool) -> Config {
        Config {
            num_attention_heads: 2,
            attention_head_dim: 12,
            in_channels: 4,
            out_channels: Some(3),
            text_dim: 8,
            freq_dim: 16,
            ffn_dim: 32,
            num_layers: 2,
            image_dim: image.then_some(6),
            added_kv_proj_dim: image.then_some(24),
            ..Config::default()
        }
    }

    fn random_model(cfg: &Config) -> Result<WanTransformer3DModel> {
        let varmap = VarMap::new();
        let model = WanTransformer3DModel::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        // VarMap zero-initialises plain `get`s (tables, norms): give every variable values.
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu)?)?;
        }
        Ok(model)
    }

    #[test]
    fn wan21_image_branch_runs_and_is_required() -> Result<()> {
        let dev = Device::Cpu;
        let model = random_model(&tiny(true))?;
        let xs = Tensor::randn(0f32, 1., (1, 4, 2, 4, 6), &dev)?;
        let text = Tensor::randn(0f32, 1., (1, 5, 8), &dev)?;
        let img = Tensor::randn(0f32, 1., (1, 3, 6), &dev)?;
        let t = Tensor::new(&[700f32], &dev)?;
        let out = model.forward_with_image(&xs, &t, &text, Some(&img))?;
        assert_eq!(out.dims(), &[1, 3, 2, 4, 6]);
        // The image tokens change the result (the branch is wired in, not ignored).
        let img2 = (&img * 2.0)?;
        let out2 = model.forward_with_image(&xs, &t, &text, Some(&img2))?;
        assert!((out2 - &out)?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        assert!(model.forward(&xs, &t, &text).is_err(), "image embeddings are required");
        assert!(random_model(&tiny(false))?.forward_with_image(&xs, &t, &text, Some(&img)).is_err());
        Ok(())
    }

    /// Per-token timesteps constant per frame (the real TI2V case) through the run-compressed
    /// conditioning equal diffusers' layout of one conditioning row per token, and all-equal
    /// per-token timesteps equal the scalar path exactly.
    #[test]
    fn per_token_runs_equal_materialised_rows() -> Result<()> {
        let dev = Device::Cpu;
        let model = random_model(&tiny(false))?;
        let xs = Tensor::randn(0f32, 1., (1, 4, 3, 4, 6), &dev)?;
        let text = Tensor::randn(0f32, 1., (1, 5, 8), &dev)?;
        let per_token: Vec<f32> = [0f32, 600., 600.].iter().flat_map(|&t| std::iter::repeat_n(t, 6)).collect();
        let t_tok = Tensor::from_vec(per_token, (1, 18), &dev)?;
        let p = model.stem().prepare(&xs, &t_tok, &text, None)?;
        assert_eq!(p.time.runs.lens(), &[6, 12], "frames 1 and 2 share one run");
        // Materialise one row per token, as diffusers does.
        let idx: Vec<u32> =
            p.time.runs.lens().iter().enumerate().flat_map(|(r, &n)| std::iter::repeat_n(r as u32, n)).collect();
        let idx = Tensor::from_vec(idx, 18, &dev)?;
        let dense = TimeConditioning {
            temb: p.time.temb.index_select(&idx, 1)?,
            proj: p.time.proj.index_select(&idx, 1)?,
            runs: TokenRuns::per_token(18),
        };
        let backend = ChunkedAttention::default();
        let attention = Attention { self_attn: &backend, cross_attn: &backend };
        let run = |time: &TimeConditioning| -> Result<Tensor> {
            let mut h = p.tokens.clone();
            for block in model.blocks() {
                h = block.forward(&h, &p.context, time, &p.rope, attention)?;
            }
            model.stem().head(&h, time, p.grid)
        };
        let max_diff =
            |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
        assert_eq!(max_diff(&run(&p.time)?, &run(&dense)?)?, 0.0);
        assert_eq!(max_diff(&run(&p.time)?, &model.forward(&xs, &t_tok, &text)?)?, 0.0);
        let same = model.forward(&xs, &Tensor::full(600f32, (1, 18), &dev)?, &text)?;
        let scalar = model.forward(&xs, &Tensor::new(&[600f32], &dev)?, &text)?;
        assert_eq!(max_diff(&same, &scalar)?, 0.0);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_rejected_with_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let model = random_model(&tiny(false))?;
        let text = Tensor::zeros((1, 5, 8), DType::F32, &dev)?;
        let t = Tensor::new(&[1f32], &dev)?;
        let odd = Tensor::zeros((1, 4, 2, 5, 6), DType::F32, &dev)?;
        let err = model.forward(&odd, &t, &text).unwrap_err().to_string();
        assert!(err.contains("multiples of the patch"), "{err}");
        let xs = Tensor::zeros((1, 4, 2, 4, 6), DType::F32, &dev)?;
        let err = model.forward(&xs, &Tensor::zeros((1, 7), DType::F32, &dev)?, &text).unwrap_err().to_string();
        assert!(err.contains("L = 12 patch tokens"), "{err}");
        let err = model.forward(&xs, &t, &Tensor::zeros((1, 5, 9), DType::F32, &dev)?).unwrap_err().to_string();
        assert!(err.contains("encoder_hidden_states"), "{err}");
        Ok(())
    }
}
