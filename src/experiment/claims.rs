//! What the experiment's numbers support: each of the paper's claims checked against the
//! results, in words for the report.

use decpo_alignment::measure::LayerMeasure;
use decpo_alignment::train::step::StepValues;

use super::eval::MethodResult;
use super::methods::parse_variant;
use super::paired::Paired;
use super::report::{Settings, fd_at, label, mean_metric, mean_of};
use super::sweep::fd_at_site;
use crate::analysis::measures::setting_name;
use crate::run::job::Summary;

/// The paper's claims next to what the run shows, one sentence each.
pub(super) fn claims(s: &Settings, groups: &[(&str, Vec<&MethodResult>)]) -> Vec<String> {
    let get = |m: &str| {
        groups
            .iter()
            .find(|(k, _)| *k == m)
            .map(|(_, v)| v.as_slice())
    };
    let mut out = Vec::new();
    if let Some(dpo) = get("dpo") {
        out.push(fd_rises_claim(s, dpo));
    }
    // DecPO as asked (`decpo`) or at each ratio and layer of a sweep, each against DPO.
    let decpos = groups
        .iter()
        .filter(|(m, _)| *m == "decpo" || parse_variant(m).is_some());
    for (method, dec) in decpos {
        if let Some(dpo) = get("dpo") {
            // A sweep's variant is measured at the layer it regularized.
            let layer = parse_variant(method).map_or(s.layer, |(layer, _)| layer);
            out.push(decpo_beats_dpo_claim(s, layer, &label(method), dpo, dec));
        }
        out.push(term_size(s, &label(method), dec));
    }
    out
}

fn fd_rises_claim(s: &Settings, dpo: &[&MethodResult]) -> String {
    let probe_fd = |first: bool| {
        mean_metric(dpo, |r| {
            r.train
                .as_ref()
                .and_then(|t| {
                    if first {
                        t.probes.first()
                    } else {
                        t.probes.last()
                    }
                })
                .map_or(f64::NAN, |p| p.layers[s.layer].fd)
        })
    };
    let mean_fd = |layers: fn(&Summary) -> &[LayerMeasure]| {
        mean_metric(dpo, |r| {
            r.train.as_ref().map_or(f64::NAN, |t| {
                let l = layers(t);
                l.iter().map(|l| l.fd).sum::<f64>() / l.len() as f64
            })
        })
    };
    let (start, end) = (probe_fd(true), probe_fd(false));
    let (mean_start, mean_end) = (mean_fd(|t| &t.layers_before), mean_fd(|t| &t.layers_after));
    let verdict = |a: f64, b: f64| {
        if b > a {
            "rises"
        } else if b < a {
            "falls"
        } else {
            "stays"
        }
    };
    format!(
        "**FD rises during DPO** (paper, Figs. 3-4). Here, FD of layer {} on the probe \
         prompts {} from {:.4} to {:.4} over DPO training; averaged over all layers on the \
         held-out prompts it {} from {:.4} to {:.4}. {}",
        s.layer,
        verdict(start, end),
        start,
        end,
        verdict(mean_start, mean_end),
        mean_start,
        mean_end,
        if end > start && mean_end > mean_start {
            "Reproduced in direction."
        } else if end > start || mean_end > mean_start {
            "Partly reproduced: the two measures disagree."
        } else {
            "Not reproduced at this budget."
        }
    )
}

fn decpo_beats_dpo_claim(
    s: &Settings,
    layer: usize,
    name: &str,
    dpo: &[&MethodResult],
    dec: &[&MethodResult],
) -> String {
    let cmp = |what: &str, f: &dyn Fn(&MethodResult) -> f64, digits: usize| {
        let by_seed = |rs: &[&MethodResult]| -> Vec<(u64, f64)> {
            rs.iter().map(|r| (r.seed, f(r))).collect()
        };
        let verdict = Paired::of(&by_seed(dpo), &by_seed(dec))
            .map_or_else(|| "no seed with both".into(), |p| p.describe(digits));
        format!(
            "{what} {:.*} ({name}) vs {:.*} (DPO), difference {verdict}",
            digits,
            mean_metric(dec, f),
            digits,
            mean_metric(dpo, f),
        )
    };
    // The judged column counts only with a judge that tells gold chosen from rejected.
    let trusted = s.judge_check.is_none_or(|c| c.trusted());
    let judged = trusted && dpo.iter().chain(dec).all(|r| r.generation.is_some());
    let mut parts = vec![
        cmp("reward margin", &|r| r.eval.rewards_margins, 4),
        cmp("reward accuracy", &|r| r.eval.rewards_accuracies, 3),
        cmp("held-out DPO loss", &|r| r.eval.loss_preference, 4),
    ];
    if dpo
        .iter()
        .chain(dec)
        .all(|r| r.eval.prefers_chosen.is_some())
    {
        parts.push(cmp(
            "share of pairs the policy itself prefers chosen",
            &|r| r.eval.prefers_chosen.unwrap_or(f64::NAN),
            3,
        ));
    }
    if dpo.iter().chain(dec).all(|r| !r.site_layers.is_empty()) {
        parts.push(cmp(
            &format!(
                "FD at the regularizer's site ({}) at layer {layer}",
                setting_name(&s.site),
            ),
            &|r| fd_at_site(r, layer),
            4,
        ));
    }
    parts.push(cmp(
        &format!("FD at the last prompt token at layer {layer}"),
        &|r| fd_at(&r.analysis, layer),
        4,
    ));
    parts.push(cmp(
        "FD at the last prompt token averaged over layers",
        &|r| mean_of(&r.analysis, |l| l.fd),
        4,
    ));
    if judged {
        parts.push(cmp(
            "judge YES rate",
            &|r| r.generation.as_ref().map_or(f64::NAN, |g| g.yes_rate),
            3,
        ));
    }
    format!(
        "**DecPO beats DPO** (paper, Table 2: higher judge scores; Fig. 6: larger reward \
         margins; FD higher at the regularized layer). Here, {name} − DPO paired by seed (mean \
         difference ± its standard error; a difference under two standard errors is noise): {}.",
        parts.join("; ")
    )
}

fn term_size(s: &Settings, name: &str, dec: &[&MethodResult]) -> String {
    let last = |f: &dyn Fn(&StepValues) -> f64| {
        mean_metric(dec, |r| {
            r.train
                .as_ref()
                .and_then(|t| t.evals.last())
                .map_or(f64::NAN, |e| f(&e.values))
        })
    };
    // λ of each run: set by the gradient ratio when one was asked for.
    let lambda = |r: &MethodResult| {
        r.train
            .as_ref()
            .and_then(|t| t.calibration)
            .map_or(s.decpo_lambda, |c| c.lambda)
    };
    let (reg, pref) = (last(&|v| v.loss_reg), last(&|v| v.loss_pref));
    let term = mean_metric(dec, |r| {
        let reg = r
            .train
            .as_ref()
            .and_then(|t| t.evals.last())
            .map_or(f64::NAN, |e| e.values.loss_reg);
        reg * lambda(r)
    });
    let ratio = mean_metric(dec, |r| {
        r.train
            .as_ref()
            .and_then(|t| t.calibration)
            .map_or(f64::NAN, |c| c.ratio)
    });
    let gradient = if ratio.is_finite() {
        format!(
            " λ was set by gradient (‖∇λL_dec‖ = {ratio}·‖∇L_pref‖ on each run's first step): \
             λ = {:.3e} on average.",
            mean_metric(dec, lambda)
        )
    } else {
        String::new()
    };
    format!(
        "Size of the {name} term at the last evaluation: L_dec = {reg:.3} per micro-batch, \
         λ·L_dec = {term:.5} next to a DPO loss of {pref:.4}.{gradient} {}",
        if term < 0.05 * pref && !ratio.is_finite() {
            "The regularizer is a small part of the objective here, so DecPO and DPO are \
             expected to stay close; a larger λ or more rows per micro-batch would test it \
             harder."
        } else if ratio.is_finite() {
            "Its value says little about its pull: the gradient ratio is what was set."
        } else {
            "The regularizer is a sizeable part of the objective."
        }
    )
}
