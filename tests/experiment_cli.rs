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
