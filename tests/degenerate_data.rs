//! Degenerate data, end to end: each case through `train`, `evaluate`, `analyze` and
//! `experiment` (the embedded model, a few steps) gives a clear error or a documented result,
//! never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::run_ok;
use serde_json::Value;

const TRAIN: &str = env!("CARGO_BIN_EXE_train");
const EVALUATE: &str = env!("CARGO_BIN_EXE_evaluate");
const ANALYZE: &str = env!("CARGO_BIN_EXE_analyze");
const EXPERIMENT: &str = env!("CARGO_BIN_EXE_experiment");

/// A one-step run of the default job, the model `evaluate` and `analyze` read (made once).
fn policy() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("degenerate-data");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let flags = ["--sft-steps", "0", "--max-steps", "1", "--out", "r"];
        run_ok(TRAIN, &flags, &dir);
        dir.join("r")
    })
}

fn pair(prompt: &str, chosen: &str, rejected: &str) -> String {
    serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected}).to_string()
}

/// `n` sort-the-digits pairs with distinct prompts of `len` digits.
fn pairs(n: usize, len: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let digits: Vec<usize> = (0..len).map(|j| (i * 7 + j * 3) % 10).collect();
            let mut sorted = digits.clone();
            sorted.sort();
            let mut wrong = sorted.clone();
            wrong.swap(0, len - 1);
            let words = |d: &[usize]| d.iter().map(|d| format!(" {d}")).collect::<String>();
            pair(
                &format!("{} =", words(&digits).trim()),
                &words(&sorted),
                &words(&wrong),
            )
        })
        .collect()
}

/// A temporary directory holding `data.jsonl` with these rows.
fn data(rows: &[String]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.path().join("data.jsonl"), text).unwrap();
    dir
}

fn run(bin: &str, args: &[&str], dir: &Path) -> Output {
    std::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs")
}

fn name(bin: &str) -> &str {
    Path::new(bin).file_name().unwrap().to_str().unwrap()
}

/// `bin` on `data.jsonl` in `dir` with the flags each binary needs to be short.
fn on_data(bin: &str, extra: &[&str], dir: &Path) -> Output {
    let policy = policy().to_str().unwrap();
    let mut args: Vec<&str> = match name(bin) {
        "train" => vec!["--sft-steps", "0", "--max-steps", "1", "--out", "t"],
        "evaluate" => vec!["--policy", policy, "--json"],
        "analyze" => vec!["--model", policy, "--out", "a"],
        "experiment" => vec![
            "--methods",
            "dpo",
            "--max-steps",
            "1",
            "--gen-prompts",
            "0",
            "--out",
            "e",
        ],
        other => panic!("no flags for {other}"),
    };
    args.extend(["--task", "trl", "--data", "data.jsonl"]);
    args.extend(extra);
    run(bin, &args, dir)
}

/// `bin` fails, and says `expected`, without a panic; its stderr.
fn fails(bin: &str, extra: &[&str], dir: &Path, expected: &str) -> String {
    let out = on_data(bin, extra, dir);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let what = format!("{} {extra:?}", name(bin));
    assert!(!out.status.success(), "{what} succeeded: {err}");
    assert!(err.contains(expected), "{what}: {expected:?} not in {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("t/summary.json")).unwrap()).unwrap()
}

/// `bin` succeeds; its stdout, and all it printed (stdout and stderr).
fn succeeds(bin: &str, extra: &[&str], dir: &Path) -> (String, String) {
    let out = on_data(bin, extra, dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {extra:?} failed: {err}",
        name(bin)
    );
    let printed = format!("{err}{stdout}");
    (stdout, printed)
}

fn evaluated_pairs(stdout: &str) -> usize {
    let json: Value = serde_json::from_str(stdout).unwrap();
    json["pairs"].as_array().unwrap().len()
}

#[test]
fn an_empty_file() {
    let d = data(&[]);
    for bin in [TRAIN, EXPERIMENT] {
        fails(
            bin,
            &[],
            d.path(),
            "no training pairs in data.jsonl: 0 training and 0",
        );
    }
    fails(EVALUATE, &[], d.path(), "no held-out pairs to evaluate");
    fails(
        EVALUATE,
        &["--pairs", "all"],
        d.path(),
        "no pairs to evaluate",
    );
    fails(ANALYZE, &[], d.path(), "no held-out pairs to measure r on");
}

/// One pair: the default 10 % held out takes it (the split rounds the training part down).
#[test]
fn one_pair() {
    let d = data(&pairs(1, 5));
    for bin in [TRAIN, EXPERIMENT] {
        fails(
            bin,
            &[],
            d.path(),
            "no training pairs in data.jsonl: 0 training and 1",
        );
        let none_out = &["--eval-fraction", "0"];
        fails(
            bin,
            none_out,
            d.path(),
            "no held-out pairs in data.jsonl: 1 training and 0",
        );
    }
    // Evaluating one pair is well defined.
    let (stdout, _) = succeeds(EVALUATE, &[], d.path());
    assert_eq!(evaluated_pairs(&stdout), 1);
    fails(
        ANALYZE,
        &[],
        d.path(),
        "FD needs at least 2 rows, got 1 from 1 prompts",
    );
}

#[test]
fn every_row_invalid() {
    let bad = pair("7 0 9 1 4 =", "", " 0 1 7 4 9");
    let d = data(&[bad.clone(), bad]);
    let invalid = "data.jsonl line 1: field `chosen`: the completion is empty (use --skip-invalid";
    for bin in [TRAIN, EVALUATE, ANALYZE, EXPERIMENT] {
        fails(bin, &[], d.path(), invalid);
    }
    let skip = &["--skip-invalid"];
    for bin in [TRAIN, EXPERIMENT] {
        fails(
            bin,
            skip,
            d.path(),
            "no training pairs in data.jsonl: 0 training and 0",
        );
    }
    fails(EVALUATE, skip, d.path(), "no held-out pairs to evaluate");
    fails(ANALYZE, skip, d.path(), "no held-out pairs to measure r on");
}

/// 10 training pairs and micro-batches of 16: the step takes the 10 (one short micro-batch).
#[test]
fn fewer_pairs_than_a_micro_batch() {
    let d = data(&pairs(12, 5));
    let small = &["--micro-batch", "16"];
    let (_, printed) = succeeds(TRAIN, small, d.path());
    assert!(
        printed.contains("train pairs 10, eval pairs 2"),
        "{printed}"
    );
    assert_eq!(summary(d.path())["steps"], 1);
    succeeds(EXPERIMENT, small, d.path());
    let (stdout, _) = succeeds(EVALUATE, &[], d.path());
    assert_eq!(evaluated_pairs(&stdout), 2);
    succeeds(ANALYZE, &[], d.path());
}

#[test]
fn a_split_that_leaves_one_side_empty() {
    let d = data(&pairs(12, 5));
    let nothing_held_out = &["--eval-fraction", "0"];
    // 5 % of 12 pairs is less than one: the training part rounds down to none.
    let nothing_to_train = &["--eval-fraction", "0.95"];
    for bin in [TRAIN, EXPERIMENT] {
        let none = "no training pairs in data.jsonl: 0 training and 12";
        fails(bin, nothing_to_train, d.path(), none);
        let none = "no held-out pairs in data.jsonl: 12 training and 0";
        fails(bin, nothing_held_out, d.path(), none);
        let one = &["--eval-fraction", "1"];
        fails(bin, one, d.path(), "eval_fraction must be in [0, 1), got 1");
    }
    fails(
        EVALUATE,
        nothing_held_out,
        d.path(),
        "no held-out pairs to evaluate",
    );
    fails(
        ANALYZE,
        nothing_held_out,
        d.path(),
        "no held-out pairs to measure r on",
    );
    // Every pair, as `--pairs all` and `--prompts all` ask, is still there to measure.
    let all = &["--eval-fraction", "0", "--pairs", "all"];
    assert_eq!(evaluated_pairs(&succeeds(EVALUATE, all, d.path()).0), 12);
    succeeds(
        ANALYZE,
        &["--eval-fraction", "0", "--prompts", "all"],
        d.path(),
    );
    // Everything held out is there to evaluate.
    let (stdout, _) = succeeds(EVALUATE, nothing_to_train, d.path());
    assert_eq!(evaluated_pairs(&stdout), 12);
}

/// Prompts of 41 tokens with at most 16 kept: every prompt is cut from the left, counted in the
/// data summary, and every binary runs on what is left.
#[test]
fn every_prompt_longer_than_the_maximum() {
    let d = data(&pairs(12, 40));
    let lengths = &["--max-prompt-length", "16", "--max-length", "60"];
    for bin in [TRAIN, EVALUATE, ANALYZE, EXPERIMENT] {
        let (_, err) = succeeds(bin, lengths, d.path());
        assert!(
            err.contains("truncated            prompts 12,"),
            "{}: {err}",
            name(bin)
        );
    }
}

/// A maximum length the prompt alone fills leaves no completion token: every pair is dropped
/// (counted in the summary), and that is an error, not an empty run.
#[test]
fn completions_emptied_by_truncation() {
    let d = data(&pairs(12, 40));
    let lengths = &["--max-prompt-length", "32", "--max-length", "32"];
    let none = "no training pairs in data.jsonl: 0 training and 0";
    let errors = [
        fails(TRAIN, lengths, d.path(), none),
        fails(EXPERIMENT, lengths, d.path(), none),
        fails(EVALUATE, lengths, d.path(), "no held-out pairs to evaluate"),
        fails(
            ANALYZE,
            lengths,
            d.path(),
            "no held-out pairs to measure r on",
        ),
    ];
    for err in errors {
        assert!(err.contains("prompt_fills_max_length: 12"), "{err}");
    }
}

/// Twelve pairs on one prompt: FD (a mean over pairs of distinct rows) is undefined. `train`
/// reports it as NaN in the log and null in its summary; `analyze` and `experiment`, whose job
/// is the measure, stop and say why.
#[test]
fn one_distinct_prompt_for_fd() {
    let rows: Vec<String> = (0..12)
        .map(|i| pair("3 1 2 =", " 1 2 3", [" 2 1 3", " 1 3 2"][i % 2]))
        .collect();
    let d = data(&rows);
    let (_, printed) = succeeds(TRAIN, &[], d.path());
    assert!(printed.contains("held-out prompts 1 distinct"), "{printed}");
    assert!(printed.contains("before: NaN NaN NaN NaN"), "{printed}");
    let summary = summary(d.path());
    assert_eq!(summary["layers_before"][0]["fd"], Value::Null, "{summary}");
    let one = "FD needs at least 2 rows, got 1 from 1 prompts at site prompt-last";
    fails(ANALYZE, &[], d.path(), one);
    fails(EXPERIMENT, &[], d.path(), one);
    // At a completion site the two held-out pairs give four rows: measured.
    succeeds(ANALYZE, &["--site", "completion-mean"], d.path());
}
