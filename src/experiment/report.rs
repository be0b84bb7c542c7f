//! The experiment's report: Markdown with the paper's Table 2 layout (methods × metrics, mean ±
//! std over seeds), the reward-margin curves (Fig. 6), FD/AV figures (Figs. 3-5), and JSON.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::SeriesLabelPosition;
use serde::{Deserialize, Serialize};

use decpo_alignment::judge::JudgeCheck;
use decpo_alignment::{RegRows, Site};

use super::claims::claims;
use super::eval::{GenerationResult, MethodResult};
use super::methods::parse_variant;
use super::sweep::dose_response;
use crate::analysis::measures::{ModelAnalysis, RunCurve, write_outputs};
use crate::analysis::plots::{Labels, Series, line_chart};

#[derive(Serialize, Deserialize)]
pub struct Settings {
    pub model: String,
    pub task: String,
    pub files: Vec<PathBuf>,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    pub layer: usize,
    pub n_layers: usize,
    pub seeds: Vec<u64>,
    /// The shared run configuration (TOML) before each method's objective.
    pub config: String,
    pub decpo_lambda: f64,
    pub l1_lambda: f64,
    /// Where DecPO and L1-Reg read their rows (reports written before sites: `eos`, all rows).
    #[serde(default)]
    pub site: Site,
    #[serde(default)]
    pub rows: RegRows,
    pub gen_prompts: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub judge: String,
    pub command: String,
    pub minutes: f64,
    pub backend: String,
    /// The judge on the gold held-out pairs (absent without a generation eval, and in reports
    /// written before the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_check: Option<JudgeCheck>,
}

const LABELS: [(&str, &str); 6] = [
    ("base", "Base"),
    ("sft", "SFT"),
    ("dpo", "DPO"),
    ("simpo", "SimPO"),
    ("l1", "L1-Reg"),
    ("decpo", "DecPO"),
];

/// The palette index of a method: its place in the table (a sweep's variants come after).
pub(super) fn color(method: &str) -> usize {
    LABELS
        .iter()
        .position(|(m, _)| *m == method)
        .unwrap_or(LABELS.len())
}

pub(super) fn label(method: &str) -> String {
    if let Some((layer, ratio)) = parse_variant(method) {
        return format!("DecPO l{layer} r{ratio}");
    }
    LABELS
        .iter()
        .find(|(m, _)| *m == method)
        .map_or(method, |(_, l)| l)
        .to_string()
}

/// Mean and sample standard deviation (None with one value).
pub(super) fn stats(v: &[f64]) -> Option<(f64, Option<f64>)> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

pub(super) fn cell(v: &[f64], scale: f64, digits: usize) -> String {
    match stats(v) {
        None => "n/a".into(),
        Some((m, None)) => format!("{:.*}", digits, m * scale),
        Some((m, Some(s))) => format!("{:.*} ± {:.*}", digits, m * scale, digits, s * scale),
    }
}

pub(super) fn fd_at(a: &ModelAnalysis, layer: usize) -> f64 {
    a.layers
        .iter()
        .find(|l| l.layer == layer)
        .map_or(f64::NAN, |l| l.fd)
}

pub(super) fn mean_of(
    a: &ModelAnalysis,
    f: fn(&crate::analysis::measures::LayerRow) -> f64,
) -> f64 {
    a.layers.iter().map(f).sum::<f64>() / a.layers.len().max(1) as f64
}

/// Per method (in table order, a sweep's variants after the rest in the order they ran), its
/// results over seeds.
pub(super) fn by_method(results: &[MethodResult]) -> Vec<(&str, Vec<&MethodResult>)> {
    let mut names: Vec<&str> = LABELS.iter().map(|(m, _)| *m).collect();
    for r in results {
        if !names.contains(&r.method.as_str()) {
            names.push(&r.method);
        }
    }
    names
        .into_iter()
        .map(|m| {
            (
                m,
                results.iter().filter(|r| r.method == m).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

pub(super) fn mean_metric(rs: &[&MethodResult], f: impl Fn(&MethodResult) -> f64) -> f64 {
    rs.iter().map(|r| f(r)).sum::<f64>() / rs.len().max(1) as f64
}

/// Rewrites the report of `out` from its `results.json` (no training).
pub fn rewrite(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct Saved {
        settings: Settings,
        results: Vec<MethodResult>,
    }
    let path = out.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let saved: Saved =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    write(out, &saved.settings, &saved.results)
}

/// Writes report.md, results.json, the analysis files and every plot into `out`.
pub fn write(out: &Path, s: &Settings, results: &[MethodResult]) -> anyhow::Result<Vec<PathBuf>> {
    let groups = by_method(results);
    let first_seed = s.seeds.first().copied().unwrap_or(0);
    let firsts: Vec<&MethodResult> = results
        .iter()
        .filter(|r| r.method == "base" || r.seed == first_seed)
        .collect();

    // FD/AV per depth (one line per method, first seed), AV differences against the base, FD of
    // the regularized layer over training steps.
    let analyses: Vec<ModelAnalysis> = firsts.iter().map(|r| r.analysis.clone()).collect();
    let curves: Vec<RunCurve> = firsts
        .iter()
        .filter_map(|r| {
            let t = r.train.as_ref()?;
            Some(RunCurve {
                name: label(&r.method).to_string(),
                dec_layer: s.layer,
                points: t.probes.clone(),
            })
        })
        .collect();
    let mut files = write_outputs(out, &analyses, &curves)?;

    files.extend(method_figures(out, &firsts)?);

    let json = out.join("results.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({ "settings": s, "results": results }))?,
    )
    .with_context(|| format!("{}", json.display()))?;
    files.push(json);

    let (dose, dose_files) = dose_response(out, s, &groups)?;
    files.extend(dose_files);
    let md = out.join("report.md");
    std::fs::write(&md, markdown(s, &groups, &firsts)? + &dose)
        .with_context(|| format!("{}", md.display()))?;
    files.push(md);
    Ok(files)
}

/// Fig. 5 (AV(DecPO) − AV(DPO) per relative depth) and Fig. 6 (held-out reward margins during
/// training), from each method's first seed.
fn method_figures(out: &Path, firsts: &[&MethodResult]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // Fig. 5: AV(DecPO) − AV(DPO) per relative depth.
    let find = |m: &str| firsts.iter().find(|r| r.method == m);
    if let (Some(dec), Some(dpo)) = (find("decpo"), find("dpo")) {
        let points = dec
            .analysis
            .layers
            .iter()
            .zip(&dpo.analysis.layers)
            .map(|(a, b)| (a.relative_depth, a.av - b.av))
            .collect();
        files.extend(line_chart(
            &out.join("av_decpo_minus_dpo"),
            &Labels {
                title: "AV(DecPO) - AV(DPO) per layer (held-out prompts)",
                x: "relative depth l / (L - 1)",
                y: "AV difference",
                legend: SeriesLabelPosition::UpperLeft,
            },
            &[Series {
                name: "DecPO - DPO".into(),
                points,
                color: color("decpo"),
            }],
            true,
        )?);
    }

    // Fig. 6: held-out reward margins during training (methods with a reference model).
    let margin_series: Vec<Series> = firsts
        .iter()
        .filter(|r| matches!(r.method.as_str(), "dpo" | "l1" | "decpo"))
        .filter_map(|r| {
            let t = r.train.as_ref()?;
            let mut points = vec![(0.0, t.eval_before.rewards_margins)];
            points.extend(
                t.evals
                    .iter()
                    .map(|e| (e.step as f64, e.values.rewards_margins)),
            );
            Some(Series {
                name: label(&r.method).to_string(),
                points,
                color: color(&r.method),
            })
        })
        .collect();
    if !margin_series.is_empty() {
        files.extend(line_chart(
            &out.join("margins"),
            &Labels {
                title: "Held-out reward margin during training",
                x: "optimizer step",
                y: "rewards/margins = mean beta (r_w - r_l)",
                legend: SeriesLabelPosition::UpperLeft,
            },
            &margin_series,
            true,
        )?);
    }
    Ok(files)
}

const TEMPLATE: &str = include_str!("report.md.j2");

const FIGURES: [(&str, &str); 6] = [
    (
        "margins.png",
        "Held-out reward margin during training (Fig. 6 of the paper); lines that coincide hide each other.",
    ),
    (
        "fd_steps.png",
        "FD of the regularized layer on held-out probe prompts during training (Fig. 4).",
    ),
    (
        "fd_depth.png",
        "FD per relative depth after training, one line per method (Fig. 3).",
    ),
    (
        "av_decpo_minus_dpo.png",
        "AV(DecPO) − AV(DPO) per relative depth (Fig. 5).",
    ),
    (
        "av_diff_depth.png",
        "AV of each method minus the base model's.",
    ),
    ("av_depth.png", "AV per relative depth."),
];

/// The report's Markdown: `report.md.j2` filled with the table, the claims and the settings.
fn markdown(
    s: &Settings,
    groups: &[(&str, Vec<&MethodResult>)],
    firsts: &[&MethodResult],
) -> anyhow::Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    env.add_template("report.md", TEMPLATE)?;
    let join = |v: Vec<String>, sep: &str| v.join(sep);
    let by_gradient = groups
        .iter()
        .flat_map(|(_, rs)| rs)
        .any(|r| r.train.as_ref().is_some_and(|t| t.calibration.is_some()));
    let text = env.get_template("report.md")?.render(minijinja::context! {
        s,
        minutes => format!("{:.1}", s.minutes),
        seeds => join(s.seeds.iter().map(u64::to_string).collect(), ", "),
        decoding => if s.temperature == 0.0 {
            "greedy".to_string()
        } else {
            format!("temperature {}", s.temperature)
        },
        rows => table_rows(s, groups),
        claims => claims(s, groups),
        figures => FIGURES,
        top_tokens => top_token_rows(s, firsts),
        files => join(s.files.iter().map(|f| format!("`{}`", f.display())).collect(), ", "),
        decpo_lambda => if by_gradient {
            "set on each run's first step from its gradient ratio (the dose-response table gives \
             it)"
                .to_string()
        } else {
            format!("= {}", s.decpo_lambda)
        },
        l1_lambda => s.l1_lambda.to_string(),
    })?;
    Ok(text)
}

/// Table 2's cells, one row per method.
fn table_rows(s: &Settings, groups: &[(&str, Vec<&MethodResult>)]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (method, rs) in groups {
        let col = |f: &dyn Fn(&MethodResult) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<f64>>();
        let judged = |f: fn(&GenerationResult) -> f64| -> Vec<f64> {
            rs.iter()
                .filter_map(|r| r.generation.as_ref().map(f))
                .collect()
        };
        rows.push(vec![
            label(method).to_string(),
            cell(&judged(|g| g.yes_rate), 100.0, 1),
            cell(&judged(|g| g.mean_p_yes), 1.0, 3),
            cell(&col(&|r| r.eval.rewards_accuracies), 100.0, 1),
            cell(&col(&|r| r.eval.rewards_margins), 1.0, 4),
            cell(
                &rs.iter()
                    .filter_map(|r| r.eval.prefers_chosen)
                    .collect::<Vec<_>>(),
                100.0,
                1,
            ),
            cell(&col(&|r| r.eval.loss_preference), 1.0, 4),
            cell(&col(&|r| fd_at(&r.analysis, s.layer)), 1.0, 4),
            cell(&col(&|r| mean_of(&r.analysis, |l| l.fd)), 1.0, 4),
            cell(
                &col(&|r| r.analysis.layers.get(s.layer).map_or(f64::NAN, |l| l.av)),
                1.0,
                4,
            ),
        ]);
    }
    rows
}

/// The top tokens of the regularized layer's most active neuron, one row per model.
fn top_token_rows(s: &Settings, firsts: &[&MethodResult]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in firsts {
        if let Some(t) = r.analysis.top_tokens.iter().find(|t| t.layer == s.layer) {
            let toks: Vec<String> = t
                .tokens
                .iter()
                .take(8)
                .map(|x| {
                    format!(
                        "`{}`",
                        x.replace('`', "'").replace('|', "\\|").replace('\n', "\\n")
                    )
                })
                .collect();
            rows.push(vec![
                label(&r.method).to_string(),
                t.neuron.to_string(),
                format!("{:.3}", t.mean_activation),
                toks.join(" "),
            ]);
        }
    }
    rows
}
