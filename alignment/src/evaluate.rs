//! Held-out evaluation, pair by pair: completion log-probs of policy and reference, rewards, the
//! preference loss and the regularizer value of each pair, and their aggregates.
//!
//! Each pair runs as its own micro-batch (no padding), so its regularizer value is the one of its
//! two sequences (for the paper mode with rows = all: 2·cos²(z_w, z_l)).

use burn::tensor::{Tensor, backend::Backend};
use decpo_datasets::batch::{BatchIds, PreferenceBatch};
use decpo_datasets::tokenize::TokenizedPair;
use decpo_model::Llama;
use serde::{Deserialize, Serialize};

use crate::config::ObjectiveConfig;
use crate::loss::preference::preference_loss;
use crate::objective::objective;
use crate::train::step::pair_logps;

/// One held-out pair. Log-probs are summed over the completion tokens (EOS included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairEval {
    pub source: String,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub ref_logps_chosen: f64,
    pub ref_logps_rejected: f64,
    /// Per-token means of the same (what IPO, SimPO and the `mean` reduction use).
    pub mean_logps_chosen: f64,
    pub mean_logps_rejected: f64,
    /// β·r_w, β·r_l and their difference, as the objective defines them.
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub margin: f64,
    /// The preference loss of this pair.
    pub loss: f64,
    /// The regularizer value L (before λ) on this pair's sequences, when one is configured.
    pub reg: Option<f64>,
}

/// Means over the held-out pairs, under the names training logs them with (TRL's; the old
/// names are still read, for reports written before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub pairs: usize,
    /// Share of pairs with r_w > r_l (ties count 0).
    #[serde(rename = "rewards/accuracies", alias = "reward_accuracy")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins", alias = "mean_margin")]
    pub rewards_margins: f64,
    /// The preference loss.
    #[serde(rename = "loss/preference", alias = "mean_loss")]
    pub loss_preference: f64,
    /// The regularizer's value before λ.
    #[serde(rename = "loss/regularizer", alias = "mean_reg")]
    pub loss_regularizer: Option<f64>,
    #[serde(rename = "logps/chosen", alias = "mean_logps_chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected", alias = "mean_logps_rejected")]
    pub logps_rejected: f64,
    /// Share of pairs where the policy itself puts more probability on the chosen completion than
    /// on the rejected one (no reference, no judge): for sycophancy's A/B questions, how often it
    /// prefers the non-sycophantic letter. Absent in results written before.
    #[serde(
        rename = "logps/accuracies",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prefers_chosen: Option<f64>,
}

fn scalars<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 after convert")
}

/// Evaluates `policy` against `reference` (the policy itself when `None`) on `pairs`.
pub fn evaluate_pairs<B: Backend>(
    policy: &Llama<B>,
    reference: Option<&Llama<B>>,
    pairs: &[TokenizedPair],
    ids: BatchIds,
    config: &ObjectiveConfig,
    logits_chunk: usize,
    device: &B::Device,
) -> Vec<PairEval> {
    let reference = reference.unwrap_or(policy);
    pairs
        .iter()
        .map(|pair| {
            let batch = PreferenceBatch::new(&[pair], ids).to_tensors::<B>(device);
            let r = pair_logps(reference, &batch, logits_chunk);
            let out = objective(policy, &batch, &r, config, logits_chunk);
            let loss = preference_loss(&out.policy, &r, config).losses;
            let v = |t| scalars::<B>(t)[0];
            let (rw, rl) = (v(out.rewards_chosen), v(out.rewards_rejected));
            PairEval {
                source: pair.source.clone(),
                logps_chosen: v(out.policy.chosen.sum),
                logps_rejected: v(out.policy.rejected.sum),
                ref_logps_chosen: v(r.chosen.sum),
                ref_logps_rejected: v(r.rejected.sum),
                mean_logps_chosen: v(out.policy.chosen.mean),
                mean_logps_rejected: v(out.policy.rejected.mean),
                rewards_chosen: rw,
                rewards_rejected: rl,
                margin: rw - rl,
                loss: v(loss),
                reg: config.regularizer.as_ref().map(|_| v(out.loss_reg)),
            }
        })
        .collect()
}

/// The aggregates of [`evaluate_pairs`]' output.
pub fn summarize(pairs: &[PairEval]) -> EvalSummary {
    let n = pairs.len().max(1) as f64;
    let mean = |f: fn(&PairEval) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    let regs: Option<Vec<f64>> = pairs.iter().map(|p| p.reg).collect();
    EvalSummary {
        pairs: pairs.len(),
        rewards_accuracies: mean(|p| f64::from(u8::from(p.rewards_chosen > p.rewards_rejected))),
        rewards_margins: mean(|p| p.margin),
        loss_preference: mean(|p| p.loss),
        loss_regularizer: regs
            .filter(|r| !r.is_empty())
            .map(|r| r.iter().sum::<f64>() / n),
        logps_chosen: mean(|p| p.logps_chosen),
        logps_rejected: mean(|p| p.logps_rejected),
        prefers_chosen: Some(mean(|p| {
            f64::from(u8::from(p.logps_chosen > p.logps_rejected))
        })),
    }
}
