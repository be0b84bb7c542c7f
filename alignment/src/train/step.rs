//! The DecPO step as a burn-train model: [`DecpoModel`] implements `TrainStep` (policy forward
//! and backward over one device's share of the micro-batches of an optimizer step, each loss
//! divided by the step's micro-batch count so that the gradients summed over micro-batches and
//! devices average) and `InferenceStep` (the same numbers, no gradients, for evaluation). The
//! training loop sums the devices' gradients and clips their global norm ([`finish_grads`]).

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Distribution, ElementConversion, Tensor};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use decpo_model::{CompletionBatch, Llama, completion_logps};
use serde::Serialize;

use crate::config::{LossType, ObjectiveConfig, Regularizer};
use crate::loss::preference::{PairLogps, SideLogps};
use crate::objective::{StepOutput, objective_with, regularizer_term};
use crate::train::clip::{clip_global_norm, split_norms};

/// What a step needs besides the weights.
#[derive(Debug, Clone)]
pub struct StepSettings {
    pub objective: ObjectiveConfig,
    /// Positions unembedded at a time in the log-prob computation.
    pub logits_chunk: usize,
    /// Global gradient-norm clip; `None` = no clipping.
    pub max_grad_norm: Option<f64>,
    /// With a regularizer, measure the norms of the gradient's two parts apart every step
    /// ([`TrainSettings::split_grad_norm`](crate::train::session::TrainSettings)).
    pub split_grad_norm: bool,
}

/// The trained model: the policy and, when the reference is a frozen copy, that copy (every
/// parameter without gradient). Without a copy and without precomputed log-probs, the reference
/// is the policy with its LoRA adapters removed.
#[derive(Module, Debug)]
pub struct DecpoModel<B: Backend> {
    pub policy: Llama<B>,
    pub reference: Option<Llama<B>>,
    #[module(skip)]
    pub settings: StepSettings,
}

/// One micro-batch: `pairs` pairs as `2·pairs` rows (chosen first) and, when precomputed, the
/// reference log-probs of its rows.
#[derive(Debug, Clone)]
pub struct MicroBatch<B: Backend> {
    pub batch: CompletionBatch<B>,
    pub reference: Option<PairLogps<B>>,
    pub pairs: usize,
    /// Real (non-padding) tokens over all rows.
    pub tokens: usize,
}

/// One device's micro-batches of an optimizer step (all of them on a single device).
#[derive(Debug, Clone)]
pub struct StepInput<B: Backend> {
    pub micro: Vec<MicroBatch<B>>,
    /// Micro-batches in the whole optimizer step, over all devices: each loss is divided by it.
    pub step_micro: usize,
}

impl<B: Backend> StepInput<B> {
    /// A whole optimizer step on one device.
    pub fn whole(micro: Vec<MicroBatch<B>>) -> Self {
        let step_micro = micro.len();
        Self { micro, step_micro }
    }
}

/// The step's numbers, on the host, averaged over its pairs (names as TRL logs them).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct StepValues {
    pub loss: f64,
    /// The preference term (DPO, IPO, hinge, SimPO or SFT).
    #[serde(rename = "loss/preference", alias = "loss/dpo")]
    pub loss_pref: f64,
    /// The regularizer term before λ.
    #[serde(rename = "loss/regularizer", alias = "loss/dec")]
    pub loss_reg: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    /// FD of the regularized layer at the regularizer's site and rows (when one is set).
    pub fd: Option<f64>,
    /// Global gradient norm before clipping (training only).
    pub grad_norm: Option<f64>,
    /// The global gradient norms of the preference term and of λ·L_reg on their own, and
    /// dec / pref (training with a regularizer, on one device; before clipping).
    #[serde(
        rename = "grad_norm/pref",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub grad_norm_pref: Option<f64>,
    #[serde(
        rename = "grad_norm/dec",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub grad_norm_dec: Option<f64>,
    #[serde(
        rename = "grad_norm/ratio",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub grad_norm_ratio: Option<f64>,
    pub pairs: usize,
    pub tokens: usize,
    /// Filled in by the training loop, which times the step.
    pub tokens_per_s: Option<f64>,
    /// Filled in by the training loop.
    pub learning_rate: Option<f64>,
}

impl ItemLazy for StepValues {
    type ItemSync = StepValues;

    fn sync(self) -> Self {
        self
    }
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.mean().into_scalar().elem::<f64>()
}

impl StepValues {
    /// Adds one micro-batch's results with weight `pairs`; [`StepValues::finish`] divides.
    /// The values that are means over pairs (all but the counts and the loop's own), in the
    /// order [`StepValues::add`] computes them: accumulation, averaging and merging go through it.
    pub fn pair_means_mut(&mut self) -> [&mut f64; 9] {
        [
            &mut self.loss,
            &mut self.loss_pref,
            &mut self.loss_reg,
            &mut self.rewards_chosen,
            &mut self.rewards_rejected,
            &mut self.rewards_margins,
            &mut self.rewards_accuracies,
            &mut self.logps_chosen,
            &mut self.logps_rejected,
        ]
    }

    fn add<B: Backend>(&mut self, out: &StepOutput<B>, pairs: usize, tokens: usize) {
        let w = pairs as f64;
        let margins = out.rewards_chosen.clone() - out.rewards_rejected.clone();
        let values = [
            out.loss.clone(),
            out.loss_pref.clone(),
            out.loss_reg.clone(),
            out.rewards_chosen.clone(),
            out.rewards_rejected.clone(),
            margins.clone(),
            margins.greater_elem(0.0).float(),
            out.policy.chosen.sum.clone(),
            out.policy.rejected.sum.clone(),
        ];
        for (acc, v) in self.pair_means_mut().into_iter().zip(values) {
            *acc += w * scalar(v);
        }
        if let Some(fd) = &out.fd {
            *self.fd.get_or_insert(0.0) += w * scalar(fd.clone());
        }
        self.pairs += pairs;
        self.tokens += tokens;
    }

    fn finish(mut self) -> Self {
        let w = self.pairs.max(1) as f64;
        for v in self.pair_means_mut() {
            *v /= w;
        }
        if let Some(fd) = &mut self.fd {
            *fd /= w;
        }
        self
    }

    /// Whether the loss and the gradient norm are finite.
    pub fn is_finite(&self) -> bool {
        self.loss.is_finite() && self.grad_norm.is_none_or(f64::is_finite)
    }
}

/// Summed and mean completion log-probs of `model` on `batch`, as pairs (each pair's prompt run
/// once: see [`Llama::forward_pairs`]).
pub fn pair_logps<B: Backend>(
    model: &Llama<B>,
    batch: &CompletionBatch<B>,
    logits_chunk: usize,
) -> PairLogps<B> {
    let out = model.forward_pairs(batch, &[]);
    let l = completion_logps(
        model,
        out.hidden,
        batch.input_ids.clone(),
        batch.completion_mask.clone(),
        logits_chunk,
    );
    PairLogps::from_rows(l.sum, l.mean)
}

impl<B: Backend> DecpoModel<B> {
    /// The reference log-probs of `batch` (`pairs` pairs) when they were not precomputed: from the
    /// frozen copy, or from the policy without adapters; zeros for reference-free losses.
    fn reference_logps(&self, batch: &CompletionBatch<B>, pairs: usize) -> PairLogps<B> {
        if matches!(
            self.settings.objective.loss,
            LossType::Simpo | LossType::Sft
        ) {
            let zeros = Tensor::zeros([pairs], (&batch.input_ids.device(), DType::F32));
            let side = SideLogps {
                sum: zeros.clone(),
                mean: zeros,
            };
            return PairLogps {
                chosen: side.clone(),
                rejected: side,
            };
        }
        let chunk = self.settings.logits_chunk;
        match &self.reference {
            Some(frozen) => pair_logps(frozen, batch, chunk),
            None => pair_logps(&self.policy.without_adapters(), batch, chunk),
        }
    }

    /// The objective of the policy on one micro-batch, given its reference log-probs (asked for
    /// after the policy's forward).
    fn micro_objective(
        &self,
        m: &MicroBatch<B>,
        reference: impl FnOnce() -> PairLogps<B>,
    ) -> StepOutput<B> {
        objective_with(
            &self.policy,
            &m.batch,
            reference,
            &self.settings.objective,
            self.settings.logits_chunk,
        )
    }
}

fn batch_inner<B: AutodiffBackend>(b: &CompletionBatch<B>) -> CompletionBatch<B::InnerBackend> {
    CompletionBatch {
        input_ids: b.input_ids.clone().inner(),
        attention_mask: b.attention_mask.clone().inner(),
        completion_mask: b.completion_mask.clone().inner(),
        eos_mask: b.eos_mask.clone().inner(),
    }
}

fn logps_from_inner<B: AutodiffBackend>(p: PairLogps<B::InnerBackend>) -> PairLogps<B> {
    let side = |s: SideLogps<B::InnerBackend>| SideLogps {
        sum: Tensor::from_inner(s.sum),
        mean: Tensor::from_inner(s.mean),
    };
    PairLogps {
        chosen: side(p.chosen),
        rejected: side(p.rejected),
    }
}

/// Seeds the device's generator with a seed drawn from it and returns that seed, so that a
/// second forward of the same micro-batch can draw the same dropout masks.
fn replay_seed<B: Backend>(device: &B::Device) -> u64 {
    let draw = Tensor::<B, 1>::random([1], Distribution::Uniform(0.0, 1.0), device);
    let seed = (draw.into_scalar().elem::<f64>() * u32::MAX as f64) as u64;
    B::seed(device, seed);
    seed
}

/// What [`DecpoModel::micro_grads`] differentiates from the full forward.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Loss {
    /// L_pref + λ·L_reg: the step.
    Total,
    /// L_pref alone: the calibration of λ.
    Preference,
}

impl<B: AutodiffBackend> DecpoModel<B> {
    /// One micro-batch's objective and the gradients of `loss` / `n` and, when `split` is given,
    /// of that regularizer's L_reg / `n` alone (a second forward, stopped at its layer, with the
    /// same dropout masks).
    ///
    /// The reference log-probs are precomputed, or computed on the inner backend (`inner`, made
    /// once per step: no autodiff graph, no second copy of the weights) on a thread of their own
    /// while the policy's forward runs: the two forwards' element-wise work (one thread each)
    /// overlaps, and the numbers are those of one after the other.
    pub(crate) fn micro_grads(
        &self,
        m: &MicroBatch<B>,
        inner: &mut Option<DecpoModel<B::InnerBackend>>,
        n: usize,
        loss: Loss,
        split: Option<&Regularizer>,
    ) -> (StepOutput<B>, GradientsParams, Option<GradientsParams>) {
        let device = m.batch.input_ids.device();
        let seed = split.map(|_| replay_seed::<B>(&device));
        let out = match &m.reference {
            Some(r) => self.micro_objective(m, || r.clone()),
            None => {
                let inner = &*inner.get_or_insert_with(|| self.valid());
                let batch = batch_inner(&m.batch);
                std::thread::scope(|s| {
                    let reference = s.spawn(|| inner.reference_logps(&batch, m.pairs));
                    self.micro_objective(m, || {
                        let r = reference
                            .join()
                            .unwrap_or_else(|e| std::panic::resume_unwind(e));
                        logps_from_inner::<B>(r)
                    })
                })
            }
        };
        let differentiated = match loss {
            Loss::Total => out.loss.clone(),
            Loss::Preference => out.loss_pref.clone(),
        };
        let grads =
            GradientsParams::from_grads(differentiated.div_scalar(n as f64).backward(), self);
        let dec = split.zip(seed).map(|(reg, seed)| {
            B::seed(&device, seed);
            let value = regularizer_term(&self.policy, &m.batch, reg).div_scalar(n as f64);
            GradientsParams::from_grads(value.backward(), self)
        });
        (out, grads, dec)
    }
}

impl<B: AutodiffBackend> TrainStep for DecpoModel<B> {
    type Input = StepInput<B>;
    type Output = StepValues;

    fn step(&self, item: StepInput<B>) -> TrainOutput<StepValues> {
        let n = item.step_micro.max(1);
        // The regularizer's share of the gradient is measured when it has one.
        let split = (self.settings.objective.regularizer)
            .filter(|r| r.lambda > 0.0 && self.settings.split_grad_norm);
        let mut inner = None;
        let mut accumulator = GradientsAccumulator::<Self>::new();
        let mut dec = GradientsAccumulator::<Self>::new();
        let mut values = StepValues::default();
        for m in item.micro {
            let (out, grads, d) = self.micro_grads(&m, &mut inner, n, Loss::Total, split.as_ref());
            values.add(&out, m.pairs, m.tokens);
            accumulator.accumulate(self, grads);
            if let Some(d) = d {
                dec.accumulate(self, d);
            }
        }
        let grads = accumulator.grads();
        if let Some(reg) = split {
            let (pref, dec) = split_norms(self, &grads, &dec.grads(), reg.lambda);
            values.grad_norm_pref = Some(pref);
            values.grad_norm_dec = Some(dec);
            values.grad_norm_ratio = Some(dec / pref);
        }
        TrainOutput {
            grads,
            item: values.finish(),
        }
    }
}

/// Clips the summed gradients of a whole step to the configured global norm; returns the norm
/// before clipping.
pub fn finish_grads<B: AutodiffBackend>(model: &DecpoModel<B>, grads: &mut GradientsParams) -> f64 {
    clip_global_norm(model, grads, model.settings.max_grad_norm)
}

impl<B: Backend> InferenceStep for DecpoModel<B> {
    type Input = StepInput<B>;
    type Output = StepValues;

    fn step(&self, item: StepInput<B>) -> StepValues {
        let mut values = StepValues::default();
        for m in item.micro {
            let reference = match &m.reference {
                Some(r) => r.clone(),
                None => self.reference_logps(&m.batch, m.pairs),
            };
            let out = self.micro_objective(&m, || reference);
            values.add(&out, m.pairs, m.tokens);
        }
        values.finish()
    }
}
