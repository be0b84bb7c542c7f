//! One step's objective: policy forward (capturing the regularizer's layer), completion
//! log-probs, preference loss against the reference log-probs, regularizer.

use burn::tensor::{DType, Tensor, backend::Backend};
use decpo_model::{CompletionBatch, Llama, completion_logps};

use crate::config::{ObjectiveConfig, RegMode, Regularizer};
use crate::loss::decorrelation::{
    Activations, feature_decorrelation, regularizer_value, site_rows,
};
use crate::loss::preference::{PairLogps, preference_loss};

/// The objective and what is logged about it.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// mean_pairs L_pref + λ·L_reg, `[1]`: the tensor to differentiate.
    pub loss: Tensor<B, 1>,
    /// mean_pairs L_pref, `[1]`.
    pub loss_pref: Tensor<B, 1>,
    /// L_reg before λ, `[1]` (0 without a regularizer).
    pub loss_reg: Tensor<B, 1>,
    /// β·r_w and β·r_l per pair, `[B]`.
    pub rewards_chosen: Tensor<B, 1>,
    pub rewards_rejected: Tensor<B, 1>,
    /// The policy's completion log-probs.
    pub policy: PairLogps<B>,
    /// FD of the regularized layer at the regularizer's site and rows on this batch (no
    /// gradient), when a regularizer is set.
    pub fd: Option<Tensor<B, 1>>,
}

/// The regularizer's value L_reg (before λ) of `policy` on `batch`, from a forward that stops at
/// its layer: what the regularizer's own gradient is computed from.
pub fn regularizer_term<B: Backend>(
    policy: &Llama<B>,
    batch: &CompletionBatch<B>,
    reg: &Regularizer,
) -> Tensor<B, 1> {
    let up_proj = if shares_prompts(Some(reg)) {
        policy.up_proj_of_pairs(batch, reg.layer)
    } else {
        policy.up_proj_of(
            batch.input_ids.clone(),
            batch.attention_mask.clone(),
            reg.layer,
        )
    };
    regularizer_value(reg, &activations(batch, up_proj))
}

/// Whether the step runs each pair's prompt once ([`Llama::forward_pairs`]): always, except
/// under the released regularizer, which reads the activations of padding positions (those the
/// shared layout does not compute).
pub fn shares_prompts(reg: Option<&Regularizer>) -> bool {
    !matches!(reg, Some(r) if r.mode == RegMode::Released)
}

fn activations<B: Backend>(batch: &CompletionBatch<B>, up_proj: Tensor<B, 3>) -> Activations<B> {
    Activations {
        up_proj,
        attention_mask: batch.attention_mask.clone(),
        completion_mask: batch.completion_mask.clone(),
        eos_mask: batch.eos_mask.clone(),
    }
}

/// Computes the objective of `policy` on `batch`, given the reference model's log-probs.
pub fn objective<B: Backend>(
    policy: &Llama<B>,
    batch: &CompletionBatch<B>,
    reference: &PairLogps<B>,
    config: &ObjectiveConfig,
    logits_chunk: usize,
) -> StepOutput<B> {
    objective_with(policy, batch, || reference.clone(), config, logits_chunk)
}

/// [`objective`], with the reference log-probs asked for only once the policy's are computed (so
/// that they can be computed meanwhile, on another thread).
pub fn objective_with<B: Backend>(
    policy: &Llama<B>,
    batch: &CompletionBatch<B>,
    reference: impl FnOnce() -> PairLogps<B>,
    config: &ObjectiveConfig,
    logits_chunk: usize,
) -> StepOutput<B> {
    let capture: Vec<usize> = config.regularizer.iter().map(|r| r.layer).collect();
    let out = if shares_prompts(config.regularizer.as_ref()) {
        policy.forward_pairs(batch, &capture)
    } else {
        policy.forward(
            batch.input_ids.clone(),
            batch.attention_mask.clone(),
            &capture,
        )
    };
    let logps = completion_logps(
        policy,
        out.hidden,
        batch.input_ids.clone(),
        batch.completion_mask.clone(),
        logits_chunk,
    );
    let policy_logps = PairLogps::from_rows(logps.sum, logps.mean);
    let pref = preference_loss(&policy_logps, &reference(), config);
    let loss_pref = pref.losses.mean();
    let device = loss_pref.device();
    let (loss, loss_reg, fd) = match (&config.regularizer, out.up_proj.into_iter().next()) {
        (Some(reg), Some(up_proj)) => {
            let acts = activations(batch, up_proj);
            let value = regularizer_value(reg, &acts);
            let fd = feature_decorrelation(site_rows(&acts, reg.site, reg.rows).detach());
            (
                loss_pref.clone() + value.clone() * reg.lambda,
                value,
                Some(fd),
            )
        }
        _ => (
            loss_pref.clone(),
            Tensor::zeros([1], (&device, DType::F32)),
            None,
        ),
    };
    StepOutput {
        loss,
        loss_pref,
        loss_reg,
        rewards_chosen: pref.rewards_chosen,
        rewards_rejected: pref.rewards_rejected,
        policy: policy_logps,
        fd,
    }
}
