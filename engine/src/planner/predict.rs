//! Per-rank, per-phase peak bytes of a generation: each phase is its resident weights plus the
//! working set the replays in [`super::dit`] and [`super::vae`] predict, with every term named so
//! the CLI can say what dominates.
//!
//! Residency follows the code that runs: [`Residency::Pipeline`] is `WanPipeline` today (transformer
//! expert(s) and the whole VAE loaded before the first step and held to the end; the text encoder
//! runs and is freed before). [`Residency::Phased`] is a runtime that loads each phase's weights
//! only for that phase (the VAE decode job already does: decoder weights only).

use serde::{Deserialize, Serialize};

use super::dit::{self, DitRun};
use super::model::ModelSpec;
use super::params;
use super::vae::{self, DecodeShape, KernelPath, VaeRun};
use crate::models::wan::transformer::attention::ChunkedAttention;
use crate::models::wan::vae::TilePlan;
use crate::parallel::plan::{ParallelPlan, PlanModel, TextEncoderPlacement, VaeMode};

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

/// Which weights stay loaded across phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// As `WanPipeline`: every expert and the whole VAE from load to the end.
    #[default]
    Pipeline,
    /// Each phase holds only its own weights (one expert at a time for A14B).
    Phased,
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
    pub residency: Residency,
    /// CPU threads per rank (rayon), for the VAE kernels' band scratch.
    pub threads: usize,
    pub attention: ChunkedAttention,
    /// Text tokens the encoder runs on (it runs only the valid tokens; 512 is the worst case).
    pub prompt_tokens: usize,
}

impl Options {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            residency: Residency::Pipeline,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            attention: ChunkedAttention::default(),
            prompt_tokens: dit::TEXT_TOKENS,
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
        // The VAE always runs in f32 (the VAE job and the pipeline load it so; diffusers too).
        VaeRun { elt: 4, path, halo, threads: self.threads }
    }
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
    fn new(name: &str, terms: Vec<Term>) -> Self {
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

/// UMT5 text encoding on `rank` of `ranks` (`text::sharded`: split by layer, rank 0 also holding
/// the token embedding, the last layer-holding rank the final norm; `ranks = 1` is the whole
/// encoder), plus the activations of `prompt_tokens` tokens (hidden state, q/k/v, f32 scores with
/// the relative bias and softmax, the gated FFN) and the broadcast `(1, 512, d_model)` f32 result.
pub fn text_encode_terms(spec: &ModelSpec, opts: &Options, rank: usize, ranks: usize) -> Vec<Term> {
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
        l * d * e * 3 + 3 * l * inner * e + 3 * scores + 3 * l * t.d_ff as u64 * e
    } else {
        0
    };
    let result = dit::TEXT_TOKENS as u64 * d * 4;
    vec![
        term("text encoder weights", weights),
        term("text encoder activations", act),
        term("prompt embeddings", result),
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

/// Predicts every rank's peak per phase.
pub fn predict(
    spec: &ModelSpec,
    req: &Request,
    plan: &ParallelPlan,
    opts: &Options,
) -> Result<Prediction, PredictError> {
    check(spec, req, plan)?;
    let (lt, lh, lw) = spec.latent_grid(req.height, req.width, req.frames);
    let dcfg = &spec.transformer;
    let e = opts.dit_elt();
    let cfg_on = req.guidance > 1.0;
    let experts = 1 + usize::from(spec.transformer_2.is_some());
    let run = DitRun { elt: e, ulysses: plan.ulysses, fsdp: plan.fsdp, attention: opts.attention };
    let tokens = dit::tokens(dcfg, (lt, lh, lw));
    let ls = dit::shard_tokens(tokens, plan.ulysses);
    // TI2V's per-token timesteps differ between frame 0 and the rest: two conditioning runs.
    let runs = if spec.index.expand_timesteps { 2 } else { 1 };

    let one_expert = dit::weights_bytes(dcfg, e, plan.fsdp);
    let resident_experts = match opts.residency {
        Residency::Pipeline => experts,
        Residency::Phased => 1,
    };
    let dit_weights = one_expert * resident_experts as u64;
    let vae_dec_w = params::vae_decoder(&spec.vae) * 4
        + match opts.target {
            Target::Cpu => params::vae_decoder_upsample_phases(&spec.vae) * 4,
            Target::Cuda => 0,
        };
    let vae_enc_w = params::vae_encoder(&spec.vae) * 4;
    let context = if opts.target == Target::Cuda { CUDA_CONTEXT_BYTES } else { 0 };
    let pipeline = opts.residency == Residency::Pipeline;

    // Text encoding.
    let (text_terms, host_text) = match (plan.text_encoder, &spec.text_encoder) {
        (TextEncoderPlacement::Sharded, Some(_)) => (true, 0),
        (TextEncoderPlacement::Cpu, Some(_)) => {
            let host = Options { target: Target::Cpu, ..*opts };
            (false, text_encode_terms(spec, &host, 0, 1).iter().map(|t| t.bytes).sum())
        }
        (_, None) => (false, 0),
    };

    // Denoise working set (the same on every rank: shards are equal up to one token).
    let latent_elems = (dcfg.out_channels() * lt * lh * lw) as u64;
    let cfg_branches = if cfg_on { 2 } else { 1 };
    let denoise_work = [
        term("latents, predictions and scheduler state", dit::latent_state_bytes(dcfg, latent_elems, e, cfg_on)),
        term("text context", dit::context_bytes(dcfg, e, cfg_branches)),
        term("rope tables", dit::rope_bytes(dcfg, tokens, plan.ulysses)),
        term("block input (tokens)", (ls * dcfg.inner_dim()) as u64 * e),
        // The stem/head temporaries and a block's never coexist: the larger one counts.
        term(
            "block activations (FFN, attention tiles)",
            dit::block_peak(dcfg, &run, ls, runs).max(dit::stem_head_bytes(dcfg, ls, e)),
        ),
        term("fsdp gathered block", dit::fsdp_gather_bytes(dcfg, e, plan.fsdp)),
    ];

    // VAE decode working set per rank.
    let halo = plan.vae_mode == VaeMode::Halo && plan.vae_parallel > 1;
    let decode_work = |rank: usize| -> u64 {
        if rank >= plan.vae_parallel {
            return 0;
        }
        match (plan.vae_mode, plan.vae_tiling) {
            (VaeMode::Tiles, Some(t)) => {
                let tiling = crate::models::wan::vae::Tiling::from(t);
                let s = spec.vae.scale_factor_spatial;
                if !TilePlan::decode_needs_tiling(&tiling, lh, lw, s) {
                    let shape = DecodeShape { t: lt, h: lh, w: lw, rows: lh, cols: lw, root: rank == 0, world: 1 };
                    return vae::decode_peak(&spec.vae, opts.vae_run(false), shape, 0);
                }
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
            _ => {
                let rows = crate::models::wan::vae::split::split_rows(lh, plan.vae_parallel.max(1))
                    .get(rank)
                    .map_or(lh, |r| r.len());
                let shape =
                    DecodeShape { t: lt, h: lh, w: lw, rows, cols: lw, root: rank == 0, world: plan.vae_parallel };
                vae::decode_peak(&spec.vae, opts.vae_run(halo), shape, 0)
            }
        }
    };

    let encode_work = |rank: usize| -> u64 {
        if !req.image || rank >= plan.vae_parallel {
            return 0;
        }
        let frames = if spec.channel_concat_i2v() { req.frames } else { 1 };
        vae::encode_peak(&spec.vae, opts.vae_run(halo), frames, req.height, req.width, plan.vae_parallel, 0)
    };

    let mut ranks = Vec::with_capacity(plan.ranks);
    for rank in 0..plan.ranks {
        let mut phases = Vec::new();
        if text_terms {
            let mut t = text_encode_terms(spec, opts, rank, plan.ranks);
            t.push(term("cuda context", context));
            phases.push(PhasePrediction::new("text_encode", t));
        }
        let vae_w = |own: u64| if pipeline { vae_dec_w + vae_enc_w } else { own };
        if req.image {
            let mut t = vec![term("vae weights", vae_w(vae_enc_w))];
            if pipeline {
                t.push(term("transformer weights", dit_weights));
            }
            t.push(term("vae encode working set", encode_work(rank)));
            t.push(term("cuda context", context));
            phases.push(PhasePrediction::new("vae_encode", t));
        }
        let mut t = vec![term("transformer weights", dit_weights)];
        if pipeline {
            t.push(term("vae weights", vae_dec_w + vae_enc_w));
        }
        t.extend(denoise_work.iter().cloned());
        t.push(term("cuda context", context));
        phases.push(PhasePrediction::new("denoise", t));
        let mut t = vec![term("vae weights", vae_w(vae_dec_w))];
        if pipeline {
            t.push(term("transformer weights", dit_weights));
        }
        t.push(term("vae decode working set", decode_work(rank)));
        t.push(term("cuda context", context));
        phases.push(PhasePrediction::new("vae_decode", t));
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
        let w = |rank, ranks| text_encode_terms(&s, &opts, rank, ranks)[0].bytes;
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

    #[test]
    fn every_rank_gets_every_phase_and_the_vae_group_decodes() {
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
        let p = predict(&s, &req(704, 1280, 121), &plan, &Options::new(Target::Cuda)).unwrap();
        assert_eq!(p.ranks.len(), 4);
        for r in &p.ranks {
            let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["text_encode", "denoise", "vae_decode"]);
            assert_eq!(r.peak_bytes, r.phases.iter().map(|p| p.peak_bytes).max().unwrap());
        }
        let decode = |r: usize| p.ranks[r].phases[2].terms.iter().any(|t| t.name == "vae decode working set");
        assert!(decode(0) && decode(1) && !decode(2) && !decode(3));
    }

    #[test]
    fn more_fsdp_means_less_per_rank() {
        let s = spec("wan2.2-t2v-a14b");
        let opts = Options::new(Target::Cuda);
        let base = ParallelPlan { ranks: 8, ulysses: 4, cfg_parallel: 2, vae_parallel: 8, ..Default::default() };
        let r = req(720, 1280, 81);
        let no_fsdp = predict(&s, &r, &base, &opts).unwrap().max_peak();
        let fsdp = predict(&s, &r, &ParallelPlan { fsdp: 8, ..base }, &opts).unwrap().max_peak();
        assert!(fsdp * 2 < no_fsdp, "{fsdp} vs {no_fsdp}");
    }

    #[test]
    fn bad_requests_are_refused_with_the_fix() {
        let s = spec("wan2.2-i2v-a14b");
        let err = predict(&s, &req(720, 1280, 81), &ParallelPlan::single(), &Options::new(Target::Cuda)).unwrap_err();
        assert!(err.to_string().contains("--image"), "{err}");
        let err = predict(&s, &req(721, 1280, 81), &ParallelPlan::single(), &Options::new(Target::Cuda)).unwrap_err();
        assert!(err.to_string().contains("nearest valid"), "{err}");
    }
}
