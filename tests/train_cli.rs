//! `train`'s command line: `--print-config` output read back with `--config` is the same
//! configuration, and an unknown field or device is an error naming it.

use std::process::Command;

fn train(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("train runs")
}

#[test]
fn print_config_round_trips_through_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--print-config"],
        // The regularizer set by flags.
        vec![
            "--print-config",
            "--regularizer",
            "l1",
            "--regularizer-layer",
            "2",
            "--regularizer-site",
            "completion-last",
        ],
    ] {
        let first = train(&args, dir.path());
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let text = String::from_utf8(first.stdout).unwrap();
        if args.len() > 1 {
            for field in ["mode = \"l1\"", "layer = 2", "site = \"completion-last\""] {
                assert!(text.contains(field), "{field} not in {text}");
            }
        }
        let path = dir.path().join("run.toml");
        std::fs::write(&path, &text).unwrap();
        let again = train(&["--config", "run.toml", "--print-config"], dir.path());
        assert!(
            again.status.success(),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
    }
}

#[test]
fn an_unknown_configuration_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[train]\nlearning_rat = 0.1\n").unwrap();
    let out = train(&["--config", "bad.toml", "--print-config"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("learning_rat") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn an_unknown_device_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(&["--devices", "cpu,gpu:7", "--print-config"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--devices") && err.contains("gpu:7"), "{err}");
}

/// Degenerate data stops `train` before any step with one message naming the file and what is
/// missing (it was a panic inside burn: "Can't concatenate an empty list of tensors").
#[test]
fn data_without_a_training_or_a_heldout_pair_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let one = r#"{"prompt": "Hi", "chosen": " yes", "rejected": " no"}"#;
    let empty_chosen = r#"{"prompt": "Hi", "chosen": "", "rejected": " no"}"#;
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    std::fs::write(
        d.join("invalid.jsonl"),
        format!("{empty_chosen}\n{empty_chosen}\n"),
    )
    .unwrap();
    std::fs::write(d.join("one.jsonl"), format!("{one}\n")).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--data", "empty.jsonl"],
            "no training pairs in empty.jsonl: 0 training and 0",
        ),
        (
            &["--data", "invalid.jsonl", "--skip-invalid"],
            "no training pairs in invalid.jsonl: 0 training and 0",
        ),
        // 10 % of one pair held out: floor(0.9) = 0 pairs train.
        (
            &["--data", "one.jsonl"],
            "no training pairs in one.jsonl: 0 training and 1",
        ),
        (
            &["--data", "one.jsonl", "--eval-fraction", "0"],
            "no held-out pairs in one.jsonl: 1 training and 0",
        ),
    ];
    for (data, expected) in cases {
        let mut args = vec!["--task", "trl", "--sft-steps", "0", "--max-steps", "1"];
        args.extend_from_slice(data);
        let out = train(&args, d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{data:?} succeeded: {err}");
        assert!(
            err.contains(expected),
            "{data:?}: {expected:?} not in {err}"
        );
        assert!(!err.contains("panicked"), "{data:?}: {err}");
    }
}
