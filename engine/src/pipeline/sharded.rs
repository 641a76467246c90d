//! One rank's part of a parallel denoise: the sub-groups a [`ParallelPlan`] implies for this rank
//! ([`PlanGroups`]) and the [`NoisePredictor`] that uses them ([`ShardedPredictor`]).
//!
//! CFG parallel: rank `r` computes branch `plan.cfg_index(r)` (0: prompt, 1: negative prompt); the
//! pair `{r mod U, r mod U + U}` all-gathers its two predictions (sequence-gathered already) and
//! both ranks combine them with the same arithmetic, so every rank of the world holds bit-identical
//! latents after each step. Without CFG parallel every rank runs both branches in turn. Ulysses and
//! FSDP live inside [`ShardedTransformer`].

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::denoise::NoisePredictor;
use super::sampling;
use crate::models::wan::transformer::{ShardOptions, ShardedTransformer};
use crate::parallel::comm::{color_of, Collective};
use crate::parallel::plan::ParallelPlan;
use crate::parallel::Rank;

/// This rank's sub-groups of a plan (`None` where the group would be this rank alone).
#[derive(Clone, Default)]
pub struct PlanGroups {
    pub ulysses: Option<Arc<dyn Collective>>,
    /// The CFG pair (branch 0 first), when `cfg_parallel` is 2.
    pub cfg: Option<Arc<dyn Collective>>,
    pub fsdp: Option<Arc<dyn Collective>>,
    /// The VAE ranks `0..vae_parallel`, for members only.
    pub vae: Option<Arc<dyn Collective>>,
    /// The CFG branch this rank computes under CFG parallel (0: prompt, 1: negative prompt).
    pub cfg_branch: usize,
}

impl PlanGroups {
    /// Builds the groups of `world`'s rank; `world` must have `plan.ranks` ranks.
    pub fn new(plan: &ParallelPlan, world: &Arc<dyn Collective>) -> Result<Self> {
        if world.world_size() != plan.ranks {
            candle_core::bail!("the plan has {} ranks but the world has {}", plan.ranks, world.world_size());
        }
        let me = world.rank();
        // A collective split per group kind, on every rank in the same order (NCCL: one device
        // communicator per group, made here once per plan; sockets: a sub-group of the mesh).
        let group = |ranks: Vec<Rank>| -> Result<Option<Arc<dyn Collective>>> {
            let (color, key) = color_of(&ranks, me);
            world.split(color, key)
        };
        let u = plan.ulysses.max(1);
        let cfg = if plan.cfg_parallel == 2 { group(vec![Rank(me.0 % u), Rank(me.0 % u + u)])? } else { None };
        Ok(Self {
            ulysses: group(plan.ulysses_group(me))?,
            cfg,
            fsdp: group(plan.fsdp_group(me))?,
            vae: group(plan.vae_group())?,
            cfg_branch: if plan.cfg_parallel == 2 { plan.cfg_index(me) } else { 0 },
        })
    }

    pub fn shard_options(&self) -> ShardOptions {
        ShardOptions { fsdp: self.fsdp.clone(), ulysses: self.ulysses.clone() }
    }
}

/// The noise prediction of one rank of a parallel plan. Expert slots may be empty: under phased
/// residency only the running expert is loaded (the job swaps them at the boundary step).
pub struct ShardedPredictor {
    experts: Vec<Option<ShardedTransformer>>,
    prompt: Tensor,
    negative: Option<Tensor>,
    cfg: Option<Arc<dyn Collective>>,
    cfg_branch: usize,
}

/// The folder of expert `index` (0: `transformer/`, the only or high-noise one; 1: `transformer_2/`).
pub fn expert_dir(root: &Path, index: usize) -> std::path::PathBuf {
    root.join(if index == 0 { "transformer" } else { "transformer_2" })
}

impl ShardedPredictor {
    /// Loads expert `index` under `root` as `groups` say (this rank's FSDP slices and the stem).
    pub fn load_expert(
        root: &Path,
        index: usize,
        groups: &PlanGroups,
        dtype: DType,
        device: &Device,
    ) -> Result<ShardedTransformer> {
        ShardedTransformer::load(&expert_dir(root, index), dtype, device, groups.shard_options())
    }

    /// Loads the experts of `only` (every one of the model when `None`): `transformer/` and, when
    /// `two_experts`, `transformer_2/`; the others' slots stay empty.
    pub fn load_experts(
        root: &Path,
        two_experts: bool,
        only: Option<usize>,
        groups: &PlanGroups,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<Option<ShardedTransformer>>> {
        let count = if two_experts { 2 } else { 1 };
        (0..count)
            .map(|i| match only {
                Some(o) if o != i => Ok(None),
                _ => Self::load_expert(root, i, groups, dtype, device).map(Some),
            })
            .collect()
    }

    /// Loads `transformer/` (and `transformer_2/` when `two_experts`) under `root` as `groups`
    /// say; embeddings are converted to `dtype`.
    pub fn load(
        root: &Path,
        two_experts: bool,
        groups: &PlanGroups,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let experts = Self::load_experts(root, two_experts, None, groups, dtype, device)?;
        Self::from_experts(experts, groups, prompt, negative, dtype, device)
    }

    /// A predictor over experts loaded earlier (kept resident between runs), with new prompts.
    pub fn from_experts(
        experts: Vec<Option<ShardedTransformer>>,
        groups: &PlanGroups,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            experts,
            prompt: prompt.to_device(device)?.to_dtype(dtype)?,
            negative: negative.map(|n| n.to_device(device)?.to_dtype(dtype)).transpose()?,
            cfg: groups.cfg.clone(),
            cfg_branch: groups.cfg_branch,
        })
    }

    /// The expert slots, for keeping them resident after the run (the prompts are dropped).
    pub fn into_experts(self) -> Vec<Option<ShardedTransformer>> {
        self.experts
    }

    /// The loaded experts.
    pub fn loaded(&self) -> impl Iterator<Item = &ShardedTransformer> {
        self.experts.iter().flatten()
    }

    /// Whether expert `index` is loaded.
    pub fn is_loaded(&self, index: usize) -> bool {
        self.experts.get(index).is_some_and(Option::is_some)
    }

    /// Frees every expert but `keep` (its weights are dropped now, before anything new is read).
    pub fn release_all_but(&mut self, keep: usize) {
        for (i, slot) in self.experts.iter_mut().enumerate() {
            if i != keep {
                *slot = None;
            }
        }
    }

    /// Puts a loaded expert into its slot.
    pub fn install(&mut self, index: usize, model: ShardedTransformer) -> Result<()> {
        match self.experts.get_mut(index) {
            Some(slot) => {
                *slot = Some(model);
                Ok(())
            }
            None => candle_core::bail!("expert {index} does not exist ({} experts)", self.experts.len()),
        }
    }

    /// Resident weight bytes of every loaded expert on this rank.
    pub fn resident_bytes(&self) -> u64 {
        self.loaded().map(ShardedTransformer::resident_bytes).sum()
    }
}

impl NoisePredictor for ShardedPredictor {
    fn predict(&mut self, expert: usize, input: &Tensor, timestep: &Tensor, guidance: Option<f64>) -> Result<Tensor> {
        let Some(Some(model)) = self.experts.get(expert) else {
            candle_core::bail!("expert {expert} is not loaded ({} expert slots)", self.experts.len())
        };
        match (guidance, &self.negative, &self.cfg) {
            (Some(g), Some(neg), Some(pair)) => {
                let embeds = if self.cfg_branch == 0 { &self.prompt } else { neg };
                let mine = model.forward(input, timestep, embeds)?.unsqueeze(0)?.contiguous()?;
                let both = pair.all_gather(&mine, 0)?;
                sampling::guidance(&both.get(0)?, &both.get(1)?, g)
            }
            (Some(g), Some(neg), None) => {
                let cond = model.forward(input, timestep, &self.prompt)?;
                let uncond = model.forward(input, timestep, neg)?;
                sampling::guidance(&cond, &uncond, g)
            }
            (Some(_), None, _) => candle_core::bail!("classifier-free guidance needs negative prompt embeddings"),
            (None, ..) => model.forward(input, timestep, &self.prompt),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model_spec::ModelSpec;
    use crate::parallel::comm::ThreadComm;
    use crate::pipeline::denoise::{run_loop, LoopSpec};
    use crate::pipeline::wan::{PromptEmbeds, WanPipeline};
    use crate::pipeline::GenerateParams;
    use crate::scheduler;
    use crate::tensor_io;

    const CASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/pipeline");

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The golden T2V denoise (4 UniPC steps with CFG) on in-process ranks under CFG 2, Ulysses 2,
    /// Ulysses 2 × CFG 2 + FSDP 4 and CFG 2 + FSDP 2 gives the single-device latents, and every rank
    /// of a world holds bit-identical latents.
    #[test]
    fn thread_worlds_denoise_like_one_device() {
        let root = Path::new(CASE);
        let dev = Device::Cpu;
        let mut inputs = tensor_io::read_all(&root.join("inputs.safetensors"), &dev).unwrap();
        let prompt = inputs.remove("prompt_embeds").unwrap();
        let negative = inputs.remove("negative_prompt_embeds").unwrap();
        let noise = inputs.remove("latents").unwrap();
        let params = GenerateParams {
            height: 96,
            width: 128,
            frames: 9,
            steps: 4,
            guidance: 5.0,
            guidance_2: None,
            shift: None,
            seed: 0,
            scheduler: None,
            sigmas: None,
        };
        let pipe = WanPipeline::load(root, DType::F32, &dev).unwrap();
        let embeds = PromptEmbeds { prompt: prompt.clone(), negative: Some(negative.clone()) };
        let want = pipe.generate(&params, &embeds, None, Some(&noise), &mut |_| {}).unwrap().latents;
        let index = ModelSpec::from_path(root).unwrap().index;
        for (u, c, f) in [(1, 2, 1), (2, 1, 1), (2, 2, 4), (1, 2, 2)] {
            let plan = ParallelPlan { ranks: u * c, ulysses: u, cfg_parallel: c, fsdp: f, ..Default::default() };
            let comms = ThreadComm::world(plan.ranks, Duration::from_secs(30));
            let outs: Vec<Tensor> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|comm| {
                        let (prompt, negative, noise, index) = (&prompt, &negative, &noise, &index);
                        s.spawn(move || {
                            let world: Arc<dyn Collective> = Arc::new(comm);
                            let groups = PlanGroups::new(&plan, &world).unwrap();
                            let mut predictor = ShardedPredictor::load(
                                root,
                                false,
                                &groups,
                                prompt,
                                Some(negative),
                                DType::F32,
                                &Device::Cpu,
                            )
                            .unwrap();
                            let mut sched = scheduler::from_pretrained(&root.join("scheduler"), None, None).unwrap();
                            sched.set_timesteps(4).unwrap();
                            let spec = LoopSpec {
                                expand_timesteps: index.expand_timesteps,
                                boundary: None,
                                has_expert_2: false,
                                patch: [1, 2, 2],
                                guidance: Some((5.0, 5.0)),
                                dtype: DType::F32,
                                preview_every: None,
                            };
                            run_loop(&spec, sched.as_mut(), noise.clone(), None, &mut predictor, &mut |_| Ok(()))
                                .unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let err = max_abs(&outs[0], &want);
            println!("ulysses {u} cfg {c} fsdp {f}: latents max-abs {err:.2e} vs one device");
            // 36 tokens are one attention block on every path and gathered weights are exact,
            // so only reduction order can differ (f32 rounding).
            assert!(err < 1e-5, "ulysses {u} cfg {c} fsdp {f}: {err}");
            for (r, o) in outs.iter().enumerate() {
                assert_eq!(max_abs(o, &outs[0]), 0.0, "rank {r} latents differ from rank 0's");
            }
        }
    }
}
