//! The DPO family of per-pair losses (SPEC section 2).
//!
//! With policy π and frozen reference π_ref, for a pair (x, y_w, y_l):
//!
//! ```text
//! r_w = logp_π(y_w|x) − logp_ref(y_w|x)      r_l = the same for y_l      Δ = r_w − r_l
//!
//! sigmoid  −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)
//! ipo      (Δ̄ − 1/(2β))²                   Δ̄ from per-token mean log-probs
//! hinge    max(0, 1 − βΔ)
//! simpo    −log σ(β·(mean logp_π(y_w) − mean logp_π(y_l)) − γ)     reference-free
//! sft      −mean logp_π(y_w)                mean token NLL of the chosen completion
//! ```
//!
//! `logp` is summed or averaged over completion tokens per [`Reduction`]; the batch loss is the
//! mean over pairs. Rewards are β times the log-ratios the loss used (β times the policy's mean
//! log-probs for SimPO).

use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::{Tensor, backend::Backend};

use crate::config::{LossType, ObjectiveConfig, Reduction};

/// Completion log-probs of one side of the pairs, `[B]` each.
#[derive(Debug, Clone)]
pub struct SideLogps<B: Backend> {
    pub sum: Tensor<B, 1>,
    pub mean: Tensor<B, 1>,
}

/// Log-probs of chosen and rejected completions under one model.
#[derive(Debug, Clone)]
pub struct PairLogps<B: Backend> {
    pub chosen: SideLogps<B>,
    pub rejected: SideLogps<B>,
}

impl<B: Backend> PairLogps<B> {
    /// Splits per-row values `[2B]` (chosen rows first) into pairs.
    pub fn from_rows(sum: Tensor<B, 1>, mean: Tensor<B, 1>) -> Self {
        let b = sum.dims()[0] / 2;
        let side = |start| SideLogps {
            sum: sum.clone().narrow(0, start, b),
            mean: mean.clone().narrow(0, start, b),
        };
        Self {
            chosen: side(0),
            rejected: side(b),
        }
    }

    fn reduced(&self, reduction: Reduction) -> (Tensor<B, 1>, Tensor<B, 1>) {
        match reduction {
            Reduction::Sum => (self.chosen.sum.clone(), self.rejected.sum.clone()),
            Reduction::Mean => (self.chosen.mean.clone(), self.rejected.mean.clone()),
        }
    }
}

/// Per-pair results, `[B]` each.
#[derive(Debug, Clone)]
pub struct PreferenceLoss<B: Backend> {
    pub losses: Tensor<B, 1>,
    pub rewards_chosen: Tensor<B, 1>,
    pub rewards_rejected: Tensor<B, 1>,
}

/// The preference loss of each pair. `reference` is ignored by `simpo` and `sft`'s loss, and
/// required by the others.
pub fn preference_loss<B: Backend>(
    policy: &PairLogps<B>,
    reference: &PairLogps<B>,
    config: &ObjectiveConfig,
) -> PreferenceLoss<B> {
    let beta = config.beta;
    // IPO uses mean log-ratios whatever the reduction; SimPO mean log-probs.
    let reduction = match config.loss {
        LossType::Ipo | LossType::Simpo => Reduction::Mean,
        _ => config.reduction,
    };
    let (pi_w, pi_l) = policy.reduced(reduction);
    let (ref_w, ref_l) = reference.reduced(reduction);
    let (r_w, r_l) = match config.loss {
        LossType::Simpo => (pi_w.clone(), pi_l.clone()),
        _ => (pi_w.clone() - ref_w, pi_l.clone() - ref_l),
    };
    let delta = r_w.clone() - r_l.clone();
    let losses = match config.loss {
        LossType::Sigmoid => {
            let eps = config.label_smoothing;
            log_sigmoid(delta.clone() * beta).mul_scalar(-(1.0 - eps))
                - log_sigmoid(delta * -beta).mul_scalar(eps)
        }
        LossType::Ipo => (delta - 1.0 / (2.0 * beta)).powi_scalar(2),
        LossType::Hinge => relu((delta * -beta) + 1.0),
        LossType::Simpo => log_sigmoid(delta * beta - config.simpo_gamma).neg(),
        LossType::Sft => policy.chosen.mean.clone().neg(),
    };
    PreferenceLoss {
        losses,
        rewards_chosen: r_w * beta,
        rewards_rejected: r_l * beta,
    }
}
