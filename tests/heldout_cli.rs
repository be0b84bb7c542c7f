//! `evaluate` and `analyze` given a `train` run directory use the run's own data, split and seed
//! (its `config.toml`): a run held out by a seeded shuffle is evaluated on exactly the pairs it
//! held out, and a data flag overrides the run's setting.

use std::process::{Command, Output};

mod common;
use common::run_ok;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

/// The row numbers (1-based lines) of sources like "<file> line 17".
fn lines<'a>(sources: impl Iterator<Item = &'a str>) -> Vec<usize> {
    sources
        .map(|s| {
            let (_, n) = s.rsplit_once("line ").expect("a line source");
            n.parse().expect("a line number")
        })
        .collect()
}

/// The held-out rows of a 600-row file as the seeded shuffle split makes them (10 %), computed
/// here with `rand` directly.
fn shuffled_heldout(seed: u64) -> Vec<usize> {
    let mut rows: Vec<usize> = (1..=600).collect();
    rows.shuffle(&mut StdRng::seed_from_u64(seed));
    rows[540..].to_vec()
}

fn evaluated_rows(out: &Output) -> Vec<usize> {
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairs = json["pairs"].as_array().unwrap();
    lines(pairs.iter().map(|p| p["source"].as_str().unwrap()))
}

#[test]
fn evaluate_and_analyze_use_the_pairs_a_run_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flags = ["--sft-steps", "1", "--max-steps", "1", "--save-every", "1"];
    let mut args = vec!["--split", "shuffle", "--seed", "7", "--out", "r"];
    args.extend(flags);
    run_ok(env!("CARGO_BIN_EXE_train"), &args, d);

    // What the run says it held out is the seed-7 shuffle's last 10 %.
    let listed = std::fs::read_to_string(d.join("r/heldout.txt")).unwrap();
    let held_out = lines(listed.lines());
    assert_eq!(held_out, shuffled_heldout(7));
    assert_ne!(held_out, shuffled_heldout(42));

    // What `evaluate` will run with is the run's configuration.
    let out = run_ok(
        env!("CARGO_BIN_EXE_evaluate"),
        &["--policy", "r", "--print-config"],
        d,
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed,
        std::fs::read_to_string(d.join("r/config.toml")).unwrap()
    );

    // `evaluate` on the run directory alone: exactly those pairs, in that order.
    let out = run_ok(
        env!("CARGO_BIN_EXE_evaluate"),
        &["--policy", "r", "--json"],
        d,
    );
    assert_eq!(evaluated_rows(&out), held_out);

    // A flag overrides the run's setting: the file-order split holds out the last 60 rows.
    let out = run_ok(
        env!("CARGO_BIN_EXE_evaluate"),
        &["--policy", "r", "--split", "file-order", "--json"],
        d,
    );
    assert_eq!(evaluated_rows(&out), (541..=600).collect::<Vec<_>>());

    // `analyze` on the run directory measures the held-out prompts: as many as the run held out.
    let out = run_ok(
        env!("CARGO_BIN_EXE_analyze"),
        &["--model", "r", "--layers", "0", "--out", "an", "--json"],
        d,
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["layers"].as_array().unwrap().len(), 1);
    let analysis: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("an/analysis.json")).unwrap())
            .unwrap();
    assert_eq!(
        analysis["models"][0]["prompts"].as_u64(),
        Some(held_out.len() as u64)
    );
    assert_eq!(analysis["models"][0]["site"], "prompt-last");

    // At a completion site the rows come from the held-out pairs (chosen and rejected), and the
    // JSON and the CSV say where they were read.
    let out = run_ok(
        env!("CARGO_BIN_EXE_analyze"),
        &[
            "--model",
            "r",
            "--layers",
            "0",
            "--site",
            "completion-mean",
            "--out",
            "an-cm",
            "--json",
        ],
        d,
    );
    let at_site: Value = serde_json::from_slice(&out.stdout).unwrap();
    let analysis: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("an-cm/analysis.json")).unwrap())
            .unwrap();
    let m = &analysis["models"][0];
    assert_eq!(
        (
            m["site"].as_str(),
            m["rows"].as_str(),
            m["prompts"].as_u64()
        ),
        (
            Some("completion-mean"),
            Some("all"),
            Some(held_out.len() as u64)
        )
    );
    let csv = std::fs::read_to_string(d.join("an-cm/layers.csv")).unwrap();
    assert!(
        csv.starts_with("model,site,layer,")
            && csv
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("r,completion-mean,0,"),
        "{csv}"
    );
    assert_ne!(at_site["layers"][0]["fd"], json["layers"][0]["fd"]);
}

#[test]
fn a_run_whose_data_changed_is_refused_by_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = [
        "--split",
        "shuffle",
        "--seed",
        "3",
        "--out",
        "r",
        "--sft-steps",
        "0",
        "--max-steps",
        "1",
        "--save-every",
        "1",
    ];
    run_ok(env!("CARGO_BIN_EXE_train"), &args, d);
    // Drop one row of the run's data file: the split the configuration gives now differs.
    let data = d.join("r/embedded-data/sort-digits.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    let fewer: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&data, fewer).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["--policy", "r", "--json"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heldout.txt") && err.contains("held out 60 pairs"),
        "{err}"
    );
}
