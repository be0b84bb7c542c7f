//! λ set by the gradient instead of by value (`[objective.regularizer] lambda_ratio = r`): on the
//! first step's pairs, from the initial weights and with the dropout masks of that step,
//! λ = r·‖∇L_pref‖ / ‖∇L_reg‖, so that the regularizer's gradient is r times the preference
//! term's on the step it was set. The result is logged as a `calibration` line of `log.jsonl`;
//! a resumed run reads it back from there.

use std::io::Write;
use std::path::Path;

use burn::data::dataloader::DataLoader;
use burn::optim::GradientsAccumulator;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::{AlignError, Result, io_err};
use crate::train::clip::global_norm;
use crate::train::data::StepLoader;
use crate::train::run::step_seed;
use crate::train::step::{DecpoModel, Loss, StepInput};

/// How λ was set from a gradient ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub ratio: f64,
    pub lambda: f64,
    /// ‖∇L_pref‖ and ‖∇L_reg‖ (before λ) on the first step's pairs.
    #[serde(rename = "grad_norm/pref")]
    pub grad_norm_pref: f64,
    #[serde(rename = "grad_norm/regularizer")]
    pub grad_norm_reg: f64,
}

const FIELD: &str = "objective.regularizer.lambda_ratio";

/// λ such that ‖∇(λ·L_reg)‖ = `ratio`·‖∇L_pref‖ on `item`, from `model`'s current weights; the
/// generator must be seeded as for the step `item` is.
pub fn calibrate<B: AutodiffBackend>(
    model: &DecpoModel<B>,
    item: StepInput<B>,
    ratio: f64,
) -> Result<Calibration> {
    let reg = model
        .settings
        .objective
        .regularizer
        .ok_or_else(|| AlignError::setting(FIELD, "needs a regularizer"))?;
    let n = item.step_micro.max(1);
    let mut inner = None;
    let mut pref = GradientsAccumulator::<DecpoModel<B>>::new();
    let mut dec = GradientsAccumulator::<DecpoModel<B>>::new();
    for m in item.micro {
        let (_, p, d) = model.micro_grads(&m, &mut inner, n, Loss::Preference, Some(&reg));
        pref.accumulate(model, p);
        if let Some(d) = d {
            dec.accumulate(model, d);
        }
    }
    let pref = global_norm(model, &pref.grads());
    let dec = global_norm(model, &dec.grads());
    let lambda = ratio * pref / dec;
    if !lambda.is_finite() || lambda <= 0.0 {
        return Err(AlignError::setting(
            FIELD,
            format!(
                "cannot set λ from the first step's gradients: ‖∇L_pref‖ = {pref}, ‖∇L_reg‖ = \
                 {dec} (layer {}, site {:?})",
                reg.layer, reg.site
            ),
        ));
    }
    Ok(Calibration {
        ratio,
        lambda,
        grad_norm_pref: pref,
        grad_norm_reg: dec,
    })
}

/// Sets `model`'s λ from its regularizer's `lambda_ratio`, if it has one: calibrated on the first
/// step of `loader` (seeded as the training loop seeds step 1) and logged to `log`, or, when the
/// run resumes, read back from `log`.
pub(crate) fn set_lambda<B: AutodiffBackend>(
    model: &mut DecpoModel<B>,
    loader: &StepLoader<B>,
    seed: u64,
    log: &Path,
    resumed: bool,
    device: &B::Device,
) -> Result<Option<Calibration>> {
    let Some(ratio) = model
        .settings
        .objective
        .regularizer
        .and_then(|r| r.lambda_ratio)
    else {
        return Ok(None);
    };
    let calibration = if resumed {
        logged(log)?
    } else {
        B::seed(device, step_seed(seed, 1, 0));
        let first = loader
            .slice(0, 1)
            .iter()
            .next()
            .ok_or_else(|| AlignError::Empty("no training step to set λ on".into()))?;
        let c = calibrate(model, first, ratio)?;
        let line = serde_json::json!({"split": "calibration", "step": 0, "values": c});
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(io_err(log))?;
        eprintln!(
            "λ set by gradient ratio {ratio}: λ = {:.6e} (‖∇L_pref‖ {:.4e}, ‖∇L_reg‖ {:.4e})",
            c.lambda, c.grad_norm_pref, c.grad_norm_reg
        );
        c
    };
    if let Some(reg) = &mut model.settings.objective.regularizer {
        reg.lambda = calibration.lambda;
    }
    Ok(Some(calibration))
}

/// The calibration line of a run's log.
fn logged(log: &Path) -> Result<Calibration> {
    let text = std::fs::read_to_string(log).map_err(io_err(log))?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["split"] == "calibration")
        .and_then(|v| serde_json::from_value(v["values"].clone()).ok())
        .ok_or_else(|| {
            AlignError::setting(
                FIELD,
                format!(
                    "{}: the run resumes but its log has no calibration line (the λ it trained \
                     with)",
                    log.display()
                ),
            )
        })
}
