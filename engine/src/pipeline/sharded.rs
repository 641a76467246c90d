//! One rank's part of a parallel denoise: the sub-groups a [`ParallelPlan`] implies for this rank
//! ([`PlanGroups`]) and the [`NoisePredictor`] that uses them ([`ShardedPredictor`]).
//!
//! CFG parallel: rank `r` computes branch `plan.cfg_index(r)` (0: prompt, 1: negative prompt); the
//! pair `{r mod U, r mod U + U}` all-gathers its two predictions (sequence-gathered already) and
//! both ranks combine them with the same arithmetic, so every rank of the world holds bit-identical
//! latents after each step. Without CFG parallel every rank runs both branches in turn. Ulysses and
//! FSDP live inside [`ShardedTransformer`].

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::denoise::NoisePredictor;
use super::sampling;
use crate::model_spec::ModelSpec;
use crate::models::wan::transformer::{ShardOptions, ShardedTransformer};
use crate::parallel::comm::Collective;
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
        let group = |ranks: Vec<Rank>| -> Result<Option<Arc<dyn Collective>>> {
            if ranks.len() > 1 && ranks.contains(&me) {
                world.sub_group(&ranks).map(Some)
            } else {
                Ok(None)
            }
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

/// The noise prediction of one rank of a parallel plan.
pub struct ShardedPredictor {
    experts: Vec<ShardedTransformer>,
    prompt: Tensor,
    negative: Option<Tensor>,
    cfg: Option<Arc<dyn Collective>>,
    cfg_branch: usize,
}

impl ShardedPredictor {
    /// Loads the model's transformer(s) (LoRAs merged) as `groups` say.
    pub fn load_experts(
        model: &ModelSpec,
        groups: &PlanGroups,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<ShardedTransformer>> {
        (0..model.experts())
            .map(|i| {
                let cfg = if i == 0 {
                    &model.transformer
                } else {
                    model.transformer_2.as_ref().unwrap_or(&model.transformer)
                };
                let weights = model.transformer_weights(i).map_err(candle_core::Error::wrap)?;
                ShardedTransformer::load(cfg, &weights, dtype, device, groups.shard_options())
            })
            .collect()
    }

    /// Loads the model's transformer(s) as `groups` say; embeddings are converted to `dtype`.
    pub fn load(
        model: &ModelSpec,
        groups: &PlanGroups,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let experts = Self::load_experts(model, groups, dtype, device)?;
        Self::from_experts(experts, groups, prompt, negative, dtype, device)
    }

    /// A predictor over experts loaded earlier (kept resident between runs), with new prompts.
    pub fn from_experts(
        experts: Vec<ShardedTransformer>,
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

    /// The experts, for keeping them resident after the run (the prompts are dropped).
    pub fn into_experts(self) -> Vec<ShardedTransformer> {
        self.experts
    }

    pub fn experts(&self) -> &[ShardedTransformer] {
        &self.experts
    }

    /// Resident weight bytes of every expert on this rank.
    pub fn resident_bytes(&self) -> u64 {
        self.experts.iter().map(ShardedTransformer::resident_bytes).sum()
    }
}

impl NoisePredictor for ShardedPredictor {
    fn predict(&mut self, expert: usize, input: &Tensor, timestep: &Tensor, guidance: Option<f64>) -> Result<Tensor> {
        let Some(model) = self.experts.get(expert) else {
            candle_core::bail!("expert {expert} is not loaded ({} experts)", self.experts.len())
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
    use std::path::Path;
    use std::time::Duration;

    use super::*;
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
        };
        let pipe = WanPipeline::load(root, DType::F32, &dev).unwrap();
        let embeds = PromptEmbeds { prompt: prompt.clone(), negative: Some(negative.clone()) };
        let want = pipe.generate(&params, &embeds, None, Some(&noise), &mut |_| {}).unwrap().latents;
        let model = ModelSpec::from_path(root).unwrap();
        let index = model.index.clone();
        for (u, c, f) in [(1, 2, 1), (2, 1, 1), (2, 2, 4), (1, 2, 2)] {
            let plan = ParallelPlan { ranks: u * c, ulysses: u, cfg_parallel: c, fsdp: f, ..Default::default() };
            let comms = ThreadComm::world(plan.ranks, Duration::from_secs(30));
            let outs: Vec<Tensor> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|comm| {
                        let (prompt, negative, noise, index, model) = (&prompt, &negative, &noise, &index, &model);
                        s.spawn(move || {
                            let world: Arc<dyn Collective> = Arc::new(comm);
                            let groups = PlanGroups::new(&plan, &world).unwrap();
                            let mut predictor = ShardedPredictor::load(
                                model,
                                &groups,
                                prompt,
                                Some(negative),
                                DType::F32,
                                &Device::Cpu,
                            )
                            .unwrap();
                            let mut sched = scheduler::from_pretrained(&root.join("scheduler"), None).unwrap();
                            sched.set_timesteps(4).unwrap();
                            let spec = LoopSpec {
                                expand_timesteps: index.expand_timesteps,
                                boundary: None,
                                has_expert_2: false,
                                patch: [1, 2, 2],
                                guidance: Some((5.0, 5.0)),
                                dtype: DType::F32,
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
