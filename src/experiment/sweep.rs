//! The dose-response section of an experiment with a sweep (`--regularizer-lambda-ratios`,
//! `--regularizer-layers`; the paper's Fig. 7, which it only sketches): for each regularized
//! layer, DPO (ratio 0) and DecPO at each gradient ratio side by side on what the regularizer
//! acts on (FD at its own site and layer over the held-out pairs) and on what DPO is for (held-out
//! reward margin and accuracy), each paired by seed against DPO. It is the positive control: at
//! some ratio FD at the site must move, or the regularizer does nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::SeriesLabelPosition;

use super::eval::MethodResult;
use super::methods::parse_variant;
use super::paired::Paired;
use super::report::{Settings, cell, mean_metric};
use crate::analysis::measures::setting_name;
use crate::analysis::plots::{Labels, Series, line_chart};

/// FD at DecPO's site over the held-out pairs, at `layer`.
pub(super) fn fd_at_site(r: &MethodResult, layer: usize) -> f64 {
    r.site_layers
        .iter()
        .find(|m| m.layer == layer)
        .map_or(f64::NAN, |m| m.fd)
}

type Metric<'a> = (
    &'a str,
    Box<dyn Fn(&MethodResult, usize) -> f64>,
    f64,
    usize,
);

fn metrics<'a>() -> [Metric<'a>; 3] {
    [
        ("FD at the site", Box::new(fd_at_site), 1.0, 4),
        (
            "margin",
            Box::new(|r: &MethodResult, _| r.eval.rewards_margins),
            1.0,
            4,
        ),
        (
            "accuracy %",
            Box::new(|r: &MethodResult, _| r.eval.rewards_accuracies),
            100.0,
            1,
        ),
    ]
}

/// The section's Markdown (empty without a sweep) and its figures.
pub(super) fn dose_response(
    out: &Path,
    s: &Settings,
    groups: &[(&str, Vec<&MethodResult>)],
) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let mut variants: Vec<(usize, f64, &[&MethodResult])> = groups
        .iter()
        .filter_map(|(m, rs)| parse_variant(m).map(|(l, r)| (l, r, rs.as_slice())))
        .collect();
    if variants.is_empty() {
        return Ok((String::new(), Vec::new()));
    }
    variants.sort_by(|a, b| (a.0, a.1).partial_cmp(&(b.0, b.1)).expect("finite ratios"));
    let dpo: &[&MethodResult] = groups
        .iter()
        .find(|(m, _)| *m == "dpo")
        .map_or(&[], |(_, v)| v.as_slice());
    let mut layers: Vec<usize> = variants.iter().map(|v| v.0).collect();
    layers.dedup();

    let mut md = String::new();
    writeln!(
        md,
        "\n## Dose-response: the regularizer's pull against what it moves\n"
    )?;
    writeln!(
        md,
        "DecPO at each gradient ratio r (λ set on each run's first step so that ‖∇λL_dec‖ = \
         r·‖∇L_pref‖) and DPO (r = 0), per regularized layer. *FD at the site* is measured where \
         the regularizer acts (site `{}`, rows {}) over all held-out pairs at that layer; \
         mean ± std over seeds, and DecPO − DPO paired by seed (mean ± standard error; under two \
         standard errors is noise).\n",
        setting_name(&s.site),
        setting_name(&s.rows)
    )?;
    writeln!(
        md,
        "| layer | r | λ | FD at the site | FD − DPO | margin | margin − DPO | accuracy % | accuracy − DPO |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    let metrics = metrics();
    let mut control = Vec::new();
    for &layer in &layers {
        let column = |rs: &[&MethodResult], m: &Metric| -> Vec<f64> {
            rs.iter().map(|r| (m.1)(r, layer) * m.2).collect()
        };
        let mut row = vec![layer.to_string(), "0 (DPO)".into(), "—".into()];
        for m in &metrics {
            row.extend([cell(&column(dpo, m), 1.0, m.3), "—".into()]);
        }
        writeln!(md, "| {} |", row.join(" | "))?;
        for &(_, ratio, rs) in variants.iter().filter(|v| v.0 == layer) {
            let lambda = mean_metric(rs, |r| {
                r.train
                    .as_ref()
                    .and_then(|t| t.calibration)
                    .map_or(f64::NAN, |c| c.lambda)
            });
            let mut row = vec![
                layer.to_string(),
                ratio.to_string(),
                format!("{lambda:.3e}"),
            ];
            for (i, m) in metrics.iter().enumerate() {
                let seeds = |rs: &[&MethodResult]| -> Vec<(u64, f64)> {
                    rs.iter().map(|r| (r.seed, (m.1)(r, layer) * m.2)).collect()
                };
                let paired = Paired::of(&seeds(dpo), &seeds(rs));
                if i == 0 {
                    control.push((layer, ratio, paired.clone()));
                }
                row.extend([
                    cell(&column(rs, m), 1.0, m.3),
                    paired.map_or_else(|| "no DPO run".into(), |p| p.describe(m.3)),
                ]);
            }
            writeln!(md, "| {} |", row.join(" | "))?;
        }
    }
    writeln!(md)?;
    for &layer in &layers {
        let at_layer: Vec<(f64, &Paired)> = control
            .iter()
            .filter(|(l, _, _)| *l == layer)
            .filter_map(|(_, r, p)| p.as_ref().map(|p| (*r, p)))
            .collect();
        writeln!(
            md,
            "- Positive control, layer {layer}: {}",
            positive_control(&at_layer)
        )?;
    }
    let mut files = dose_figures(out, &layers, &variants, dpo)?;
    files.extend(layer_figures(out, &layers, &variants, dpo)?);
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "png"))
    {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        writeln!(md, "\n![{name}]({name})")?;
    }
    Ok((md, files))
}

/// What FD at the site did against DPO's, over the ratios of one layer (ratio, DecPO − DPO).
fn positive_control(at_layer: &[(f64, &Paired)]) -> String {
    let list = |ps: Vec<&(f64, &Paired)>| {
        ps.iter()
            .map(|(r, p)| format!("r = {r} ({:+.4})", p.mean))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if at_layer.is_empty() {
        return "no DPO run to compare with.".into();
    }
    if at_layer.iter().all(|(_, p)| p.se.is_none()) {
        return format!(
            "one seed only, so no error bar: FD at the site minus DPO's is {}. Not a result \
             until more seeds agree.",
            list(at_layer.iter().collect())
        );
    }
    let moved: Vec<_> = at_layer
        .iter()
        .filter(|(_, p)| p.distinguishable())
        .collect();
    if moved.is_empty() {
        "FD at the site did not move distinguishably from DPO at any ratio tried. Either the \
         regularizer is too weak at these ratios or something is wrong."
            .into()
    } else {
        format!("FD at the site moved beyond noise at {}.", list(moved))
    }
}

/// FD at the site, margin and accuracy against the gradient ratio, one line per layer.
fn dose_figures(
    out: &Path,
    layers: &[usize],
    variants: &[(usize, f64, &[&MethodResult])],
    dpo: &[&MethodResult],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (i, (name, f, scale, _)) in metrics().iter().enumerate() {
        let series: Vec<Series> = layers
            .iter()
            .enumerate()
            .map(|(k, &layer)| {
                let mean = |rs: &[&MethodResult]| mean_metric(rs, |r| f(r, layer) * scale);
                let mut points = Vec::new();
                if !dpo.is_empty() {
                    points.push((0.0, mean(dpo)));
                }
                points.extend(
                    variants
                        .iter()
                        .filter(|v| v.0 == layer)
                        .map(|&(_, ratio, rs)| (ratio, mean(rs))),
                );
                Series {
                    name: format!("layer {layer}"),
                    points,
                    color: k,
                }
            })
            .collect();
        let stem = ["fd_site_dose", "margin_dose", "accuracy_dose"][i];
        files.extend(line_chart(
            &out.join(stem),
            &Labels {
                title: &format!("Held-out {name} against the gradient ratio (0 = DPO)"),
                x: "gradient ratio r = |grad lambda L_dec| / |grad L_pref| on the first step",
                y: name,
                legend: SeriesLabelPosition::UpperRight,
            },
            &series,
            false,
        )?);
    }
    Ok(files)
}

/// FD at the site, margin and accuracy against the regularized layer, one line for DPO and one
/// per ratio; drawn only when the sweep covers more than one layer.
fn layer_figures(
    out: &Path,
    layers: &[usize],
    variants: &[(usize, f64, &[&MethodResult])],
    dpo: &[&MethodResult],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if layers.len() < 2 {
        return Ok(files);
    }
    for (i, (name, f, scale, _)) in metrics().iter().enumerate() {
        let series = layer_series(layers, variants, dpo, |rs, layer| {
            mean_metric(rs, |r| f(r, layer) * scale)
        });
        let stem = ["fd_site_layer", "margin_layer", "accuracy_layer"][i];
        files.extend(line_chart(
            &out.join(stem),
            &Labels {
                title: &format!("Held-out {name} against the regularized layer"),
                x: "layer the regularizer acts on (DPO: measured at that layer)",
                y: name,
                legend: SeriesLabelPosition::UpperRight,
            },
            &series,
            false,
        )?);
    }
    Ok(files)
}

/// The lines of a chart against the layer: DPO (its value at each layer: FD at the site depends
/// on the layer measured, margin and accuracy do not) and each ratio over the layers it was run
/// at, `value` giving a group of runs' mean at a layer.
fn layer_series<T>(
    layers: &[usize],
    variants: &[(usize, f64, &[T])],
    dpo: &[T],
    value: impl Fn(&[T], usize) -> f64,
) -> Vec<Series> {
    let mut series = Vec::new();
    if !dpo.is_empty() {
        series.push(Series {
            name: "DPO (r = 0)".into(),
            points: layers.iter().map(|&l| (l as f64, value(dpo, l))).collect(),
            color: 0,
        });
    }
    let mut ratios: Vec<f64> = variants.iter().map(|v| v.1).collect();
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    for (k, ratio) in ratios.into_iter().enumerate() {
        series.push(Series {
            name: format!("DecPO r = {ratio}"),
            points: variants
                .iter()
                .filter(|v| v.1 == ratio)
                .map(|&(l, _, rs)| (l as f64, value(rs, l)))
                .collect(),
            color: k + 1,
        });
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_positive_control_says_what_the_seeds_allow() {
        let dpo = [(1, 0.3), (2, 0.2), (3, 0.25)];
        let one = Paired::of(&dpo[..1], &[(1, 0.9)]).unwrap();
        let said = positive_control(&[(1.0, &one)]);
        assert!(said.starts_with("one seed only"), "{said}");
        assert!(said.contains("r = 1 (+0.6000)"), "{said}");
        // +0.6, +0.7, +0.65: far beyond two standard errors.
        let moved = Paired::of(&dpo, &[(1, 0.9), (2, 0.9), (3, 0.9)]).unwrap();
        // +0.1, -0.1, 0.0: noise.
        let noise = Paired::of(&dpo, &[(1, 0.4), (2, 0.1), (3, 0.25)]).unwrap();
        let said = positive_control(&[(0.1, &noise), (1.0, &moved)]);
        assert_eq!(
            said,
            "FD at the site moved beyond noise at r = 1 (+0.6500)."
        );
        let said = positive_control(&[(0.1, &noise)]);
        assert!(said.starts_with("FD at the site did not move"), "{said}");
    }

    #[test]
    fn against_the_layer_dpo_spans_every_layer_and_each_ratio_its_own() {
        // A run is its value at each layer: index = layer.
        let dpo = [vec![0.1, 0.2, 0.3]];
        let a = [vec![9.0, 0.5, 9.0]];
        let b = [vec![9.0, 9.0, 0.7]];
        let c = [vec![0.9, 9.0, 9.0]];
        let variants: [(usize, f64, &[Vec<f64>]); 3] = [(1, 1.0, &a), (2, 1.0, &b), (0, 0.3, &c)];
        let series = layer_series(&[0, 1, 2], &variants, &dpo, |rs, l| rs[0][l]);
        let lines: Vec<(&str, &[(f64, f64)])> = series
            .iter()
            .map(|s| (s.name.as_str(), s.points.as_slice()))
            .collect();
        assert_eq!(
            lines,
            [
                ("DPO (r = 0)", &[(0.0, 0.1), (1.0, 0.2), (2.0, 0.3)][..]),
                ("DecPO r = 0.3", &[(0.0, 0.9)][..]),
                ("DecPO r = 1", &[(1.0, 0.5), (2.0, 0.7)][..]),
            ]
        );
    }
}
