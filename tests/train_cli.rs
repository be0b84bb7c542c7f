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
