//! `experiment`, `analyze` and `evaluate` end to end on the embedded small Llama: every method
//! trains and is evaluated, the report and its plots are written, DPO learns the held-out pairs,
//! and the three ways of measuring FD (the training probe, the experiment's analysis, `analyze`
//! on the exported model) agree.

use std::path::Path;

mod common;
use common::run_ok;

use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn fds(layers: &Value) -> Vec<f64> {
    layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["fd"].as_f64().unwrap())
        .collect()
}

#[test]
fn experiment_trains_every_method_and_the_measures_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        env!("CARGO_BIN_EXE_experiment"),
        &["--max-steps", "6", "--save-every", "3", "--out", "rep"],
        d,
    );
    let rep = d.join("rep");
    let results = read_json(&rep.join("results.json"));
    let results = results["results"].as_array().unwrap();
    let methods: Vec<&str> = results
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["base", "sft", "dpo", "simpo", "l1", "decpo"]);

    let by = |m: &str| results.iter().find(|r| r["method"] == m).unwrap();
    // The base against itself: every margin 0, ties count as wrong.
    assert_eq!(by("base")["eval"]["rewards/margins"].as_f64(), Some(0.0));
    assert_eq!(by("base")["eval"]["rewards/accuracies"].as_f64(), Some(0.0));
    // Six DPO steps separate most held-out pairs of the sort-digits task.
    let dpo = &by("dpo")["eval"];
    assert!(dpo["rewards/accuracies"].as_f64().unwrap() > 0.6, "{dpo}");
    assert!(dpo["rewards/margins"].as_f64().unwrap() > 0.0, "{dpo}");

    // The probe before training measures the base model on the same held-out prompts.
    let probe0 = &by("dpo")["train"]["probes"][0];
    assert_eq!(probe0["step"], 0);
    let (a, b) = (
        fds(&probe0["layers"]),
        fds(&by("base")["analysis"]["layers"]),
    );
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "probe {a:?} vs analysis {b:?}");
    }
    let probes = by("decpo")["train"]["probes"].as_array().unwrap();
    let steps: Vec<u64> = probes.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 3, 6]);

    let report = std::fs::read_to_string(rep.join("report.md")).unwrap();
    for row in [
        "| Base |",
        "| SFT |",
        "| DPO |",
        "| SimPO |",
        "| L1-Reg |",
        "| DecPO |",
    ] {
        assert!(report.contains(row), "report.md lacks the row {row}");
    }
    for plot in [
        "margins",
        "fd_steps",
        "fd_depth",
        "av_depth",
        "av_diff_depth",
        "av_decpo_minus_dpo",
    ] {
        let png = std::fs::read(rep.join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png is not a PNG");
        let svg = std::fs::read_to_string(rep.join(format!("{plot}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("<text"),
            "{plot}.svg has no text"
        );
    }

    // Run again, the finished runs are read back, not trained again: the same results. With
    // another budget the runs on disk are not this experiment's: an error naming the run.
    let again = run_ok(
        env!("CARGO_BIN_EXE_experiment"),
        &["--max-steps", "6", "--save-every", "3", "--out", "rep"],
        d,
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.matches("finished before").count(), 5, "{stderr}");
    assert!(!stderr.contains("): training"), "{stderr}");
    let results_again = read_json(&rep.join("results.json"));
    assert_eq!(
        &results_again["results"].as_array().unwrap()[1..],
        &results[1..]
    );
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_experiment"))
        .args(["--max-steps", "4", "--save-every", "2", "--out", "rep"])
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success());
    assert!(
        stderr.contains("runs/sft-s42 holds a run of another configuration"),
        "{stderr}"
    );

    // `analyze` on the exported DPO model and its run directory gives the experiment's numbers.
    let data = d.join("rep/runs/base/embedded-data/sort-digits.jsonl");
    let out = run_ok(
        env!("CARGO_BIN_EXE_analyze"),
        &[
            "--model",
            "rep/runs/dpo-s42",
            "--data",
            data.to_str().unwrap(),
            "--run",
            "rep/runs/dpo-s42",
            "--out",
            "an",
            "--json",
        ],
        d,
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (fds(&json["layers"]), fds(&by("dpo")["analysis"]["layers"]));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "analyze {a:?} vs experiment {b:?}");
    }
    for f in [
        "analysis.json",
        "layers.csv",
        "top_tokens.csv",
        "fd_steps.png",
    ] {
        assert!(d.join("an").join(f).is_file(), "analyze did not write {f}");
    }

    // `evaluate` of the DPO model against itself: zero rewards, loss ln 2 on every pair.
    let out = run_ok(
        env!("CARGO_BIN_EXE_evaluate"),
        &[
            "--policy",
            "rep/runs/dpo-s42",
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
        d,
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairs = json["pairs"].as_array().unwrap();
    assert_eq!(
        pairs.len(),
        json["summary"]["pairs"].as_u64().unwrap() as usize
    );
    for p in pairs {
        assert_eq!(p["logps_chosen"], p["ref_logps_chosen"]);
        assert!((p["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    }
}

#[test]
fn a_sweep_runs_decpo_per_gradient_ratio_and_reports_the_dose_response() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        env!("CARGO_BIN_EXE_experiment"),
        &[
            "--methods",
            "dpo,decpo",
            "--regularizer-lambda-ratios",
            "0.5,2",
            "--regularizer-layers",
            "1,2",
            "--regularizer-site",
            "completion-mean",
            "--max-steps",
            "4",
            "--save-every",
            "2",
            "--gen-prompts",
            "0",
            "--out",
            "sw",
        ],
        d,
    );
    let rep = d.join("sw");
    let results = read_json(&rep.join("results.json"));
    let results = results["results"].as_array().unwrap();
    let methods: Vec<&str> = results
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    // One DecPO variant per layer and ratio, in that order (the embedded Llama has 4 layers).
    assert_eq!(
        methods,
        [
            "base",
            "dpo",
            "decpo-l1-r0.5",
            "decpo-l1-r2",
            "decpo-l2-r0.5",
            "decpo-l2-r2"
        ]
    );
    // Both variants set λ on the same first step from the same weights: λ scales with the ratio,
    // and each run's config.toml keeps the λ it trained with.
    let lambda = |m: &str| {
        let r = results.iter().find(|r| r["method"] == m).unwrap();
        let cal = &r["train"]["calibration"];
        let saved = std::fs::read_to_string(rep.join(format!("runs/{m}-s42/config.toml"))).unwrap();
        let saved: toml::Value = toml::from_str(&saved).unwrap();
        let reg = &saved["objective"]["regularizer"];
        assert_eq!(reg["lambda"].as_float(), cal["lambda"].as_f64(), "{m}");
        assert_eq!(reg["lambda_ratio"].as_float(), cal["ratio"].as_f64(), "{m}");
        cal["lambda"].as_f64().unwrap()
    };
    let (a, b) = (lambda("decpo-l1-r0.5"), lambda("decpo-l1-r2"));
    assert!((b / a - 4.0).abs() < 1e-9, "λ {a} at r 0.5, {b} at r 2");
    // Every model is measured where the regularizer acts, at every layer.
    for r in results {
        assert_eq!(
            r["site_layers"].as_array().unwrap().len(),
            4,
            "{}",
            r["method"]
        );
    }
    let report = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(report.contains("## Dose-response"), "{report}");
    assert!(
        report.contains("| 1 | 0.5 |") && report.contains("| 1 | 2 |"),
        "{report}"
    );
    // One seed gives no error bar, and the report says so rather than a verdict either way.
    assert!(
        report.contains("Positive control, layer 1: one seed only, so no error bar"),
        "{report}"
    );
    // Each variant is compared with DPO on every metric, FD at its own site and layer among them.
    for (variant, layer) in [("DecPO l1 r0.5", 1), ("DecPO l1 r2", 1), ("DecPO l2 r2", 2)] {
        let claim = report
            .lines()
            .find(|l| l.contains(&format!("Here, {variant} − DPO paired by seed")))
            .unwrap_or_else(|| panic!("no claim for {variant}: {report}"));
        let site = format!("FD at the regularizer's site (completion-mean) at layer {layer} ");
        let prompt_last = format!("FD at the last prompt token at layer {layer} ");
        assert!(claim.contains(&site), "{claim}");
        assert!(claim.contains(&prompt_last), "{claim}");
        assert!(claim.contains("(one seed: no error bar)"), "{claim}");
    }
    assert!(
        report.contains("λ set on each run's first step from its gradient ratio"),
        "{report}"
    );
    assert!(report.contains("| 2 | 2 |"), "{report}");
    assert!(
        report.contains("Positive control, layer 2: one seed only"),
        "{report}"
    );
    // Two layers: the measures are drawn against the ratio and against the layer.
    for plot in [
        "fd_site_dose",
        "margin_dose",
        "accuracy_dose",
        "fd_site_layer",
        "margin_layer",
        "accuracy_layer",
    ] {
        assert!(rep.join(format!("{plot}.png")).is_file(), "{plot}.png");
        assert!(
            report.contains(&format!("![{plot}.png]({plot}.png)")),
            "{plot}"
        );
    }
}
