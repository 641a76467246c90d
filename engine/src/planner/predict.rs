//! Per-rank, per-phase peak bytes of a generation as the `Generate` job runs it
//! (`runtime::jobs::generate`, after the sharded text job when there is one): each phase is what
//! the job holds then plus the working set the replays in [`super::dit`] and [`super::vae`]
//! predict, with every term named so the CLI can say what dominates.
//!
//! Phases and residency, as the job does them (the names are the `--report` phase names):
//! - `text_encode` (`--text-encoder-on sharded`, when the folder has a text encoder): this rank's
//!   UMT5 layers, loaded and freed inside the text job that runs before the generation.
//! - `load`: the prompt embeddings and the initial latents (read before it and held to the end),
//!   every expert's transformer part (stem, and the blocks whole or this rank's FSDP slices), the
//!   VAE decoder on the decoding ranks `0..vae_parallel` (rank 0 alone when it is 1) and the VAE
//!   encoder on rank 0 for image-to-video. Everything stays loaded through `denoise`.
//! - `encode_image` (rank 0, image-to-video): the image (A14B: with its zero frames) through the
//!   encoder on rank 0 alone, untiled; every rank then holds the broadcast condition.
//! - `denoise`: the loaded weights plus one step's working set.
//! - `decode`: with `keep_weights` (the session's default: the next run reuses the weights) the
//!   transformer stays loaded; without, it is dropped before the decode. The decoding ranks add the
//!   VAE decode working set; rank 0 also converts the finished video to [0, 1] and sends it back.

use serde::{Deserialize, Serialize};

use super::dit::{self, DitRun};
use super::model::ModelSpec;
use super::params;
use super::vae::{self, DecodeShape, KernelPath, VaeRun};
use crate::models::wan::transformer::attention::ChunkedAttention;
use crate::models::wan::vae::TilePlan;
use crate::parallel::plan::{ParallelPlan, PlanModel, Residency, TextEncoderPlacement, VaeMode};

/// Where the ranks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// f32 everywhere, the CPU VAE kernels; heap bytes.
    Cpu,
    /// bf16 transformer and text encoder, f32 VAE on candle's generic ops; device bytes, plus the
    /// CUDA context.
    Cuda,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// The generation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    /// CFG runs when > 1 (two forwards per step).
    pub guidance: f64,
    /// Image-to-video (an image is VAE-encoded first).
    pub image: bool,
}

/// Knobs of the prediction that are not part of the plan.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub target: Target,
    /// CPU threads per rank (rayon), for the VAE kernels' band scratch and the matmul slabs.
    pub threads: usize,
    /// L2 cache bytes per core: gemm keeps a thread-local packing slab of this size on every
    /// thread that has run a matrix multiply (CPU target only).
    pub l2_bytes: u64,
    pub attention: ChunkedAttention,
    /// Text tokens the encoder runs on (it runs only the valid tokens; 512 is the worst case).
    pub prompt_tokens: usize,
    /// The transformer stays loaded through the decode (and for the session's next run), as the
    /// job does with `keep_weights`; `false`: it is freed before the decode.
    pub keep_weights: bool,
    /// FSDP gathers the next block while the current one runs (the workers' default; off with
    /// `TESSERA_FSDP_PREFETCH=0`): a second gathered block, and the gather's transient beside the
    /// block's activations instead of after them.
    pub fsdp_prefetch: bool,
}

impl Options {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            l2_bytes: l2_cache_bytes(),
            attention: ChunkedAttention::default(),
            prompt_tokens: dit::TEXT_TOKENS,
            keep_weights: true,
            fsdp_prefetch: crate::pipeline::sharded::fsdp_prefetch_enabled(),
        }
    }

    fn dit_elt(&self) -> u64 {
        match self.target {
            Target::Cpu => 4,
            Target::Cuda => 2,
        }
    }

    fn vae_run(&self, halo: bool) -> VaeRun {
        let path = match self.target {
            Target::Cpu => KernelPath::Cpu,
            Target::Cuda => KernelPath::Generic,
        };
        VaeRun {
            elt: self.vae_elt(),
            path,
            halo,
            threads: self.threads,
            im2col_budget: crate::models::wan::vae::ops::im2col_budget(),
        }
    }

    /// Bytes per VAE weight and activation: the Wan VAE runs in bf16 on CUDA (`models::vae::run_dtype`),
    /// in f32 on the CPU.
    fn vae_elt(&self) -> u64 {
        let cuda = self.target == Target::Cuda;
        crate::models::vae::run_dtype_on(crate::model_spec::Family::Wan, cuda).size_in_bytes() as u64
    }
}

/// This machine's L2 cache per core, as Linux reports it (`/sys/devices/system/cpu/cpu0/cache`);
/// 1 MiB, a common server-core size, where it cannot be read.
pub fn l2_cache_bytes() -> u64 {
    const FALLBACK: u64 = 1 << 20;
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let Ok(entries) = std::fs::read_dir(dir) else { return FALLBACK };
    for e in entries.flatten() {
        if read(e.path().join("level")).as_deref() != Some("2") {
            continue;
        }
        let Some(size) = read(e.path().join("size")) else { continue };
        let (num, scale) = match size.strip_suffix('K') {
            Some(n) => (n, 1 << 10),
            None => match size.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (size.as_str(), 1),
            },
        };
        if let Ok(n) = num.parse::<u64>() {
            return n * scale;
        }
    }
    FALLBACK
}

/// One named contribution to a phase's peak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub name: String,
    pub bytes: u64,
}

/// One phase of one rank, shaped like the run report's `PhaseReport` (plus its terms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasePrediction {
    pub name: String,
    pub peak_bytes: u64,
    pub terms: Vec<Term>,
}

impl PhasePrediction {
    pub(crate) fn new(name: &str, terms: Vec<Term>) -> Self {
        let terms: Vec<Term> = terms.into_iter().filter(|t| t.bytes > 0).collect();
        Self { name: name.into(), peak_bytes: terms.iter().map(|t| t.bytes).sum(), terms }
    }

    /// The largest term.
    pub fn dominant(&self) -> Option<&Term> {
        self.terms.iter().max_by_key(|t| t.bytes)
    }
}

/// One rank, shaped like the run report's `RankReport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankPrediction {
    pub rank: usize,
    pub device: String,
    pub peak_bytes: u64,
    /// Largest weights held at once.
    pub weights_bytes: u64,
    pub phases: Vec<PhasePrediction>,
}

impl RankPrediction {
    /// The phase with the highest peak.
    pub fn peak_phase(&self) -> Option<&PhasePrediction> {
        self.phases.iter().max_by_key(|p| p.peak_bytes)
    }
}

/// The whole prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub ranks: Vec<RankPrediction>,
    /// Host memory of a CPU-placed text encoder (0 when sharded or absent).
    pub host_text_encoder_bytes: u64,
}

impl Prediction {
    pub fn max_peak(&self) -> u64 {
        self.ranks.iter().map(|r| r.peak_bytes).max().unwrap_or(0)
    }
}

/// Why a prediction cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Plan(#[from] crate::parallel::plan::PlanError),
    #[error(transparent)]
    Params(#[from] crate::pipeline::ParamsError),
    #[error("{0}")]
    Request(String),
}

/// CUDA context, cuBLAS workspace and kernel images resident on every GPU rank (not measured here:
/// the usual 0.5–1 GB of a CUDA process before any tensor).
pub const CUDA_CONTEXT_BYTES: u64 = 800 << 20;

fn term(name: &str, bytes: u64) -> Term {
    Term { name: name.into(), bytes }
}

/// UMT5 text encoding of `prompts` prompts (the prompt, and the negative one under CFG) on `rank`
/// of `ranks` (`text::sharded`: split by layer, rank 0 also holding the token embedding, the last
/// layer-holding rank the final norm; `ranks = 1` is the whole encoder), plus the activations of
/// `prompt_tokens` tokens and the `(1, 512, d_model)` f32 results every rank ends with.
///
/// Activations, one prompt and one layer at a time (`models::umt5::attention`): the hidden state
/// and its norms, q, k, v and the context; in f32 the scores `q·kᵀ`, the layer's relative bias,
/// their sum and the softmax, all four bound until the attention returns; the gated FFN's two
/// `l × d_ff` and their product; and the `l × l` relative-position buckets.
pub fn text_encode_terms(spec: &ModelSpec, opts: &Options, rank: usize, ranks: usize, prompts: usize) -> Vec<Term> {
    let Some(t) = &spec.text_encoder else { return vec![] };
    let e = opts.dit_elt();
    let holders = ranks.min(t.num_layers).max(1);
    let layers = crate::text::sharded::layer_split(t.num_layers, holders).get(rank).map_or(0, |r| r.len());
    let mut weights = layers as u64 * params::umt5_layer(t) * e;
    if rank == 0 {
        weights += (t.vocab_size * t.d_model) as u64 * e;
    }
    if rank + 1 == holders {
        weights += t.d_model as u64 * e;
    }
    let l = opts.prompt_tokens as u64;
    let d = t.d_model as u64;
    let inner = (t.num_heads * t.d_kv) as u64;
    let scores = t.num_heads as u64 * l * l * 4;
    let act = if layers > 0 || rank == 0 {
        l * d * e * 3 + 3 * l * inner * e + 4 * scores + 3 * l * t.d_ff as u64 * e + l * l * 4
    } else {
        0
    };
    let result = prompts as u64 * dit::TEXT_TOKENS as u64 * d * 4;
    let slabs = if opts.target == Target::Cpu && layers > 0 { opts.threads as u64 * opts.l2_bytes } else { 0 };
    vec![
        term("text encoder weights", weights),
        term("text encoder activations", act),
        term("prompt embeddings", result),
        term("matmul slabs", slabs),
    ]
}

/// Validates the request against the model and the plan.
fn check(spec: &ModelSpec, req: &Request, plan: &ParallelPlan) -> Result<(), PredictError> {
    let params = crate::pipeline::GenerateParams {
        height: req.height,
        width: req.width,
        frames: req.frames,
        steps: 1,
        guidance: req.guidance,
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    params.validate(spec.size_multiple())?;
    plan.validate(PlanModel { num_heads: spec.transformer.num_attention_heads, cfg: req.guidance > 1.0 })?;
    if spec.channel_concat_i2v() && !req.image {
        return Err(PredictError::Request(format!(
            "this transformer takes {} input channels (image-to-video): add --image",
            spec.transformer.in_channels
        )));
    }
    Ok(())
}

/// Bytes of one prompt's embeddings as the job receives them: `(1, 512, text_dim)` f32 (the text
/// encoders pad to 512 tokens).
fn prompt_embeds_bytes(spec: &ModelSpec) -> u64 {
    (dit::TEXT_TOKENS * spec.transformer.text_dim) as u64 * 4
}

/// Copies of the prompt embeddings a worker holds on the host: the session sends every prompt's
/// embeddings inline in the job spec (text encoded on the host or by the sharded text job, and
/// files read and checked on the host alike), which the worker keeps while the job runs, and
/// copies them into a tensor.
fn host_embeds_copies() -> u64 {
    2
}

/// The image condition every rank holds after `encode_image`: TI2V the normalised image latent
/// `(1, z, 1, h, w)` and the first-frame mask `(1, 1, T, h, w)`; A14B the mask and latents of the
/// image and its zero frames `(1, 4 + z, T, h, w)`. All f32.
fn condition_bytes(spec: &ModelSpec, (lt, lh, lw): (usize, usize, usize)) -> u64 {
    let z = spec.vae.z_dim;
    let elems = if spec.channel_concat_i2v() { (4 + z) * lt * lh * lw } else { z * lh * lw + lt * lh * lw };
    elems as u64 * 4
}

/// Predicts every rank's peak per phase of a Wan model (`super::dispatch::predict` picks the
/// family).
pub fn predict_wan(
    spec: &ModelSpec,
    req: &Request,
    plan: &ParallelPlan,
    opts: &Options,
) -> Result<Prediction, PredictError> {
    check(spec, req, plan)?;
    let grid = spec.latent_grid(req.height, req.width, req.frames);
    let (lt, lh, lw) = grid;
    let dcfg = &spec.transformer;
    let e = opts.dit_elt();
    let cfg_on = req.guidance > 1.0;
    let branches: u64 = if cfg_on { 2 } else { 1 };
    let run = DitRun { elt: e, ulysses: plan.ulysses, fsdp: plan.fsdp, attention: opts.attention };
    let tokens = dit::tokens(dcfg, grid);
    let ls = dit::shard_tokens(tokens, plan.ulysses);
    // TI2V's per-token timesteps differ between frame 0 and the rest: two conditioning runs.
    let runs = if spec.index.expand_timesteps { 2 } else { 1 };
    let cuda = opts.target == Target::Cuda;
    let context = if cuda { CUDA_CONTEXT_BYTES } else { 0 };

    // Pipeline residency: every expert is loaded at `load` and kept until the decode. Phased (two
    // experts only): the high-noise expert from `load`, the low-noise one from the `switch` on.
    let expert_weights: Vec<u64> =
        std::iter::once(dcfg).chain(spec.transformer_2.as_ref()).map(|c| dit::weights_bytes(c, e, plan.fsdp)).collect();
    let two_experts = expert_weights.len() == 2;
    let phased = two_experts && plan.residency == Residency::Phased;
    let dit_weights_with = |expert: usize| -> u64 {
        if phased {
            expert_weights[expert]
        } else {
            expert_weights.iter().sum()
        }
    };
    // The VAE runs in f32 on the CPU (whose decoder adds its sub-pixel upsample weights) and in
    // bf16 on CUDA (its f32 output conv, a few thousand parameters, counted at that size too).
    let ve = opts.vae_elt();
    let vae_dec_w =
        params::vae_decoder(&spec.vae) * ve + if cuda { 0 } else { params::vae_decoder_upsample_phases(&spec.vae) * 4 };
    let vae_enc_w = params::vae_encoder(&spec.vae) * ve;

    // Held from before `load` to the end of the job: the prompt embeddings (host memory: counted
    // on the CPU only; on a GPU the predictor's run-dtype copies count while it lives) and the
    // initial latents (f32 on the device; the denoise loop takes them over).
    let host_embeds = if cuda { 0 } else { branches * prompt_embeds_bytes(spec) * host_embeds_copies() };
    let device_embeds = if cuda { branches * (dit::TEXT_TOKENS * dcfg.text_dim) as u64 * e } else { 0 };
    let latent_elems = (dcfg.out_channels() * lt * lh * lw) as u64;
    let latents = latent_elems * 4;
    let condition = if req.image { condition_bytes(spec, grid) } else { 0 };
    // CPU only: FSDP slices pass through a read buffer at load; from the first matrix multiply on,
    // every compute thread keeps gemm's L2-sized packing slab.
    let fsdp_read = if cuda { 0 } else { dit::fsdp_read_buffer_bytes(dcfg, plan.fsdp) };
    let slabs = if cuda { 0 } else { opts.threads as u64 * opts.l2_bytes };

    // Text encoding: in a job of its own before the generation (sharded), or in the host process.
    let (text_terms, host_text) = match (plan.text_encoder, &spec.text_encoder) {
        (TextEncoderPlacement::Sharded, Some(_)) => (true, 0),
        (TextEncoderPlacement::Cpu, Some(_)) => {
            let host = Options { target: Target::Cpu, ..*opts };
            (false, text_encode_terms(spec, &host, 0, 1, branches as usize).iter().map(|t| t.bytes).sum())
        }
        (_, None) => (false, 0),
    };

    // FSDP prefetch holds a second block only when there is a next block to gather.
    let prefetch = opts.fsdp_prefetch && plan.fsdp > 1 && dcfg.num_layers > 1;
    // One step's working set (the same on every rank: shards are equal up to one token).
    let denoise_work = [
        term("latents, predictions and scheduler state", dit::latent_state_bytes(dcfg, latent_elems, e, cfg_on)),
        term("text context", dit::context_bytes(dcfg, e)),
        term("rope tables", dit::rope_bytes(dcfg, tokens, plan.ulysses)),
        term("block input (tokens)", (ls * dcfg.inner_dim()) as u64 * e),
        // The stem/head temporaries and a block's never coexist: the larger counts. The FSDP
        // gather's buffers come after the block without prefetch, beside it with.
        term(
            "block activations (FFN, attention tiles)",
            dit::block_peak(dcfg, &run, ls, runs).max(dit::stem_head_bytes(dcfg, ls, e)).max(if prefetch {
                0
            } else {
                dit::fsdp_gather_transient_bytes(dcfg, e, plan.fsdp)
            }),
        ),
        term(
            "fsdp gather transient (prefetch, beside the block)",
            if prefetch { dit::fsdp_gather_transient_bytes(dcfg, e, plan.fsdp) } else { 0 },
        ),
        term("fsdp gathered block", dit::fsdp_gather_bytes(dcfg, e, plan.fsdp)),
        term(
            "fsdp prefetched block (the next, gathered during this one)",
            if prefetch { dit::fsdp_gather_bytes(dcfg, e, plan.fsdp) } else { 0 },
        ),
    ];

    // The decode working set of a rank of the VAE group (`0..vae_parallel`).
    let halo = plan.vae_mode == VaeMode::Halo && plan.vae_parallel > 1;
    let decode_work = |rank: usize| -> u64 {
        let replay = match (plan.vae_mode, plan.vae_tiling) {
            (VaeMode::Tiles, Some(t)) => {
                let tiling = crate::models::wan::vae::Tiling::from(t);
                let s = spec.vae.scale_factor_spatial;
                if !TilePlan::decode_needs_tiling(&tiling, lh, lw, s) {
                    let shape = DecodeShape { t: lt, h: lh, w: lw, rows: lh, cols: lw, root: rank == 0, world: 1 };
                    vae::decode_peak(&spec.vae, opts.vae_run(false), shape, 0)
                } else {
                    let tp = TilePlan::for_decode(&tiling, lh, lw, s, spec.vae.patch());
                    let shape = DecodeShape {
                        t: lt,
                        h: lh,
                        w: lw,
                        rows: tp.tile_h.min(lh),
                        cols: tp.tile_w.min(lw),
                        root: rank == 0,
                        world: plan.vae_parallel,
                    };
                    vae::tiled_decode_peak(&spec.vae, opts.vae_run(false), shape, (tp.rows(), tp.cols()), 0)
                }
            }
            _ => {
                let rows = crate::models::wan::vae::split::split_rows(lh, plan.vae_parallel.max(1))
                    .get(rank)
                    .map_or(lh, |r| r.len());
                let shape =
                    DecodeShape { t: lt, h: lh, w: lw, rows, cols: lw, root: rank == 0, world: plan.vae_parallel };
                vae::decode_peak(&spec.vae, opts.vae_run(halo), shape, 0)
            }
        };
        // Rank 0 then turns the video into [0, 1] beside the denormalised latents.
        let finish = if rank == 0 { latent_elems * 4 + vae::unit_range_peak(&spec.vae, lt, lh, lw) } else { 0 };
        replay.max(finish)
    };

    // The image encode on the VAE group (rank 0 alone when it is one rank), in the plan's VAE mode:
    // halo slabs over the group, or tiles (one tile's working set, the tiles spread over the group).
    // TI2V encodes the image alone, A14B the image and its zero frames. Each encoding rank builds
    // the whole conditioning video and its frames-major copy; only its slab or tiles go through
    // the encoder.
    let encode_frames = if spec.channel_concat_i2v() { req.frames } else { 1 };
    let encode_work = || -> u64 {
        let image = (3 * req.height * req.width) as u64 * 4;
        let v = plan.vae_parallel.max(1);
        let tiles = match (plan.vae_mode, plan.vae_tiling) {
            (VaeMode::Tiles, t) => {
                let tiling = crate::models::wan::vae::Tiling::from(t.unwrap_or_default());
                TilePlan::encode_needs_tiling(&tiling, req.height, req.width).then_some(tiling)
            }
            (VaeMode::Halo, _) => None,
        };
        let run = opts.vae_run(plan.vae_mode == VaeMode::Halo && v > 1);
        let work = match tiles {
            // One tile through the encoder (its own video copies replaced by the whole video's),
            // and the latents of every tile assembled on rank 0.
            Some(t) => {
                let (th, tw) = (t.tile_sample_min_height.min(req.height), t.tile_sample_min_width.min(req.width));
                let tile_video = 2 * (3 * encode_frames * th * tw) as u64 * 4;
                let full_video = 2 * (3 * encode_frames * req.height * req.width) as u64 * 4;
                let latents = (2 * spec.vae.z_dim * lt * lh * lw) as u64 * 4 * 2;
                vae::encode_peak(&spec.vae, run, encode_frames, th, tw, 1, 0) - tile_video + full_video + latents
            }
            None => {
                vae::encode_peak(&spec.vae, run, encode_frames, req.height, req.width, if run.halo { v } else { 1 }, 0)
            }
        };
        image + work
    };

    let mut ranks = Vec::with_capacity(plan.ranks);
    for rank in 0..plan.ranks {
        let decodes = rank < plan.vae_parallel.max(1);
        let encodes = req.image && decodes;
        let vae_w = if decodes { vae_dec_w } else { 0 } + if encodes { vae_enc_w } else { 0 };
        let mut phases = Vec::new();
        if text_terms {
            let mut t = text_encode_terms(spec, opts, rank, plan.ranks, branches as usize);
            t.push(term("cuda context", context));
            phases.push(PhasePrediction::new("text_encode", t));
        }
        let loaded = |expert: usize| {
            vec![
                term("cuda context", context),
                term("prompt embeddings", host_embeds + device_embeds),
                term("transformer weights", dit_weights_with(expert)),
                term("vae weights", vae_w),
            ]
        };
        let mut t = loaded(0);
        t.push(term("initial latents", latents));
        // The transformer loads before the VAE: its read buffer shows only where the VAE is smaller.
        t.push(term("fsdp slice read buffer", fsdp_read.saturating_sub(vae_w)));
        phases.push(PhasePrediction::new("load", t));
        if encodes {
            let mut t = loaded(0);
            t.push(term("initial latents", latents));
            t.push(term("matmul slabs", slabs));
            t.push(term("vae encode working set", encode_work()));
            phases.push(PhasePrediction::new("encode_image", t));
        }
        for expert in 0..expert_weights.len() {
            if phased && expert == 1 {
                // Between two steps: the high-noise expert is freed, the low-noise one read slice
                // by slice; the loop's latent state and the condition stay.
                let mut t = loaded(1);
                t.push(term("image condition", condition));
                t.push(term("matmul slabs", slabs));
                t.push(term("latents, predictions and scheduler state", denoise_work[0].bytes));
                t.push(term("text context", denoise_work[1].bytes));
                t.push(term("fsdp slice read buffer", fsdp_read));
                phases.push(PhasePrediction::new("switch", t));
            }
            let mut t = loaded(expert);
            t.push(term("image condition", condition));
            t.push(term("matmul slabs", slabs));
            t.extend(denoise_work.iter().cloned());
            let name = match (two_experts, expert) {
                (false, _) => "denoise",
                (true, 0) => "denoise_high",
                (true, _) => "denoise_low",
            };
            phases.push(PhasePrediction::new(name, t));
        }
        let last_expert = expert_weights.len() - 1;
        let t = vec![
            term("cuda context", context),
            term("prompt embeddings", host_embeds),
            term("transformer weights", if opts.keep_weights { dit_weights_with(last_expert) } else { 0 }),
            term("vae weights", vae_w),
            term("latents", latents),
            term("image condition", condition),
            term("matmul slabs", slabs),
            term("vae decode working set", if decodes { decode_work(rank) } else { 0 }),
        ];
        phases.push(PhasePrediction::new("decode", t));
        let weights_bytes = phases
            .iter()
            .map(|p| p.terms.iter().filter(|t| t.name.ends_with("weights")).map(|t| t.bytes).sum::<u64>())
            .max()
            .unwrap_or(0);
        let peak_bytes = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        ranks.push(RankPrediction {
            rank,
            device: match opts.target {
                Target::Cpu => "cpu".into(),
                Target::Cuda => format!("cuda:{rank}"),
            },
            peak_bytes,
            weights_bytes,
            phases,
        });
    }
    Ok(Prediction { ranks, host_text_encoder_bytes: host_text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(name: &str) -> ModelSpec {
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/configs")).join(name);
        ModelSpec::from_path(&root).unwrap()
    }

    fn req(h: usize, w: usize, f: usize) -> Request {
        Request { height: h, width: w, frames: f, guidance: 5.0, image: false }
    }

    #[test]
    fn text_encoder_terms_split_the_layers() {
        let s = spec("wan2.2-ti2v-5b");
        let opts = Options::new(Target::Cuda);
        let w = |rank, ranks| text_encode_terms(&s, &opts, rank, ranks, 2)[0].bytes;
        // 5.68 B bf16 parameters: ~11.4 GB on one rank.
        assert!((11_300_000_000..11_400_000_000).contains(&w(0, 1)), "{}", w(0, 1));
        // 8 ranks: 3 of 24 layers each; rank 0 adds the 1.05 B-parameter embedding.
        let layer = params::umt5_layer(s.text_encoder.as_ref().unwrap()) * 2;
        assert_eq!(w(1, 8), 3 * layer);
        assert_eq!(w(0, 8), 3 * layer + 256_384 * 4096 * 2);
        assert_eq!((0..8).map(|r| w(r, 8)).sum::<u64>(), w(0, 1));
        // More ranks than layers: the extra ranks hold nothing.
        assert_eq!(w(30, 32), 0);
    }

    fn phase<'a>(r: &'a RankPrediction, name: &str) -> &'a PhasePrediction {
        r.phases.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("rank {} has no {name}", r.rank))
    }

    fn term_bytes(p: &PhasePrediction, name: &str) -> u64 {
        p.terms.iter().find(|t| t.name == name).map_or(0, |t| t.bytes)
    }

    /// The job's phases in its order; only the VAE group decodes and encodes the image.
    #[test]
    fn every_rank_gets_the_jobs_phases_and_the_vae_group_decodes() {
        let s = spec("wan2.2-ti2v-5b");
        let plan = ParallelPlan {
            ranks: 4,
            ulysses: 2,
            cfg_parallel: 2,
            fsdp: 4,
            vae_parallel: 2,
            text_encoder: TextEncoderPlacement::Sharded,
            ..Default::default()
        };
        let i2v = Request { image: true, ..req(704, 1280, 121) };
        let p = predict_wan(&s, &i2v, &plan, &Options::new(Target::Cuda)).unwrap();
        assert_eq!(p.ranks.len(), 4);
        for r in &p.ranks {
            let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
            if r.rank < 2 {
                assert_eq!(names, ["text_encode", "load", "encode_image", "denoise", "decode"]);
            } else {
                assert_eq!(names, ["text_encode", "load", "denoise", "decode"]);
            }
            assert_eq!(r.peak_bytes, r.phases.iter().map(|p| p.peak_bytes).max().unwrap());
        }
        let decodes = |r: usize| term_bytes(phase(&p.ranks[r], "decode"), "vae decode working set") > 0;
        assert!(decodes(0) && decodes(1) && !decodes(2) && !decodes(3));
        // Encoder and decoder are loaded on the VAE group only, in bf16 on CUDA.
        let vae = |r: usize| term_bytes(phase(&p.ranks[r], "load"), "vae weights");
        let (dec, enc) = (params::vae_decoder(&s.vae) * 2, params::vae_encoder(&s.vae) * 2);
        assert_eq!((vae(0), vae(1), vae(2)), (dec + enc, dec + enc, 0));
        // Halo slabs over the two ranks: each encodes about half of what one rank alone would.
        let alone =
            predict_wan(&s, &i2v, &ParallelPlan { vae_parallel: 1, ..plan }, &Options::new(Target::Cuda)).unwrap();
        let work = |p: &Prediction| term_bytes(phase(&p.ranks[0], "encode_image"), "vae encode working set");
        assert!(work(&p) < work(&alone), "{} vs {}", work(&p), work(&alone));
    }

    /// Without `keep_weights` the job drops the transformer before the decode; it keeps the VAE
    /// from `load` on either way.
    #[test]
    fn the_transformer_is_dropped_before_the_decode() {
        let s = spec("wan2.2-t2v-a14b");
        let mut opts = Options::new(Target::Cuda);
        let kept = predict_wan(&s, &req(720, 1280, 81), &ParallelPlan::single(), &opts).unwrap();
        let experts = 2 * dit::weights_bytes(&s.transformer, 2, 1);
        assert_eq!(term_bytes(phase(&kept.ranks[0], "decode"), "transformer weights"), experts);
        opts.keep_weights = false;
        let p = predict_wan(&s, &req(720, 1280, 81), &ParallelPlan::single(), &opts).unwrap();
        let r = &p.ranks[0];
        for name in ["load", "denoise_high", "denoise_low"] {
            assert_eq!(term_bytes(phase(r, name), "transformer weights"), experts, "{name}: both experts");
            assert!(term_bytes(phase(r, name), "vae weights") > 0, "{name}: the decoder is loaded");
        }
        assert_eq!(term_bytes(phase(r, "decode"), "transformer weights"), 0);
        assert_eq!(r.weights_bytes, experts + params::vae_decoder(&s.vae) * 2, "the decoder in bf16 on CUDA");
    }

    /// Phased residency: one expert per phase, a `switch` between the experts' denoise phases, and
    /// every phase's peak lower by about one expert shard than under pipeline residency.
    #[test]
    fn phased_residency_holds_one_expert() {
        let s = spec("wan2.2-i2v-a14b");
        let opts = Options::new(Target::Cuda);
        let base =
            ParallelPlan { ranks: 8, ulysses: 4, cfg_parallel: 2, fsdp: 8, vae_parallel: 8, ..Default::default() };
        let r = Request { image: true, ..req(720, 1280, 81) };
        let pipeline = predict_wan(&s, &r, &base, &opts).unwrap();
        let phased = predict_wan(&s, &r, &ParallelPlan { residency: Residency::Phased, ..base }, &opts).unwrap();
        let shard = dit::weights_bytes(&s.transformer, 2, 8);
        for (a, b) in pipeline.ranks.iter().zip(&phased.ranks) {
            let names: Vec<&str> = b.phases.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["load", "encode_image", "denoise_high", "switch", "denoise_low", "decode"]);
            for name in ["load", "denoise_high", "denoise_low", "decode"] {
                assert_eq!(phase(a, name).peak_bytes - phase(b, name).peak_bytes, shard, "rank {} {name}", a.rank);
            }
            assert_eq!(term_bytes(phase(b, "switch"), "transformer weights"), shard);
            assert!(phase(b, "switch").peak_bytes < phase(b, "denoise_low").peak_bytes);
        }
        // Without CFG (guidance 1, the distilled 4-step recipe) there is one branch: no CFG parallel.
        let one = Request { guidance: 1.0, ..r };
        assert!(predict_wan(&s, &one, &base, &opts).is_err(), "CFG parallel needs two branches");
        let u8 = ParallelPlan { ulysses: 8, cfg_parallel: 1, residency: Residency::Phased, ..base };
        let p = predict_wan(&s, &one, &u8, &opts).unwrap();
        let gpus = super::super::search::GpuSpec::parse("8x24GB").unwrap();
        assert!(super::super::search::fits(&p, &gpus) && super::super::search::fits(&phased, &gpus));
        assert!(phase(&p.ranks[0], "denoise_low").peak_bytes <= phase(&phased.ranks[0], "denoise_low").peak_bytes);
    }

    #[test]
    fn more_fsdp_means_less_per_rank() {
        let s = spec("wan2.2-t2v-a14b");
        let opts = Options::new(Target::Cuda);
        let base = ParallelPlan { ranks: 8, ulysses: 4, cfg_parallel: 2, vae_parallel: 8, ..Default::default() };
        let r = req(720, 1280, 81);
        let no_fsdp = predict_wan(&s, &r, &base, &opts).unwrap().max_peak();
        let fsdp = predict_wan(&s, &r, &ParallelPlan { fsdp: 8, ..base }, &opts).unwrap().max_peak();
        assert!(fsdp * 2 < no_fsdp, "{fsdp} vs {no_fsdp}");
    }

    #[test]
    fn bad_requests_are_refused_with_the_fix() {
        let s = spec("wan2.2-i2v-a14b");
        let err =
            predict_wan(&s, &req(720, 1280, 81), &ParallelPlan::single(), &Options::new(Target::Cuda)).unwrap_err();
        assert!(err.to_string().contains("--image"), "{err}");
        let err =
            predict_wan(&s, &req(721, 1280, 81), &ParallelPlan::single(), &Options::new(Target::Cuda)).unwrap_err();
        assert!(err.to_string().contains("nearest valid"), "{err}");
    }
}
