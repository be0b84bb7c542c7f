//! A checkpoint that cannot be written (a full disk, here a file-size limit on the process)
//! stops `train` with an error naming the checkpoint and the one left to resume from; that one
//! stays complete, and `--resume` with room again finishes with the weights of a run that never
//! failed.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use decpo_alignment::train::checkpoint::latest_checkpoint;

fn train(dir: &Path, args: &[&str], file_size_limit: Option<u64>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args(["--sft-steps", "0", "--save-every", "2"])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE");
    if let Some(limit) = file_size_limit {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // A write past the limit then fails with EFBIG, as one on a full disk fails
                // with ENOSPC, instead of killing the process.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().expect("train runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_run_and_the_last_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full = train(d, &["--max-steps", "8", "--out", "full"], None);
    assert!(full.status.success(), "{}", text(&full));

    let first = train(d, &["--max-steps", "4", "--out", "run"], None);
    assert!(first.status.success(), "{}", text(&first));
    let checkpoints = d.join("run/decpo");
    assert_eq!(latest_checkpoint(&checkpoints), Some(2));
    // The embedded model's checkpoint files are 0.7-1.5 MB; the run's other files are smaller
    // than 100 kB.
    let limited = train(
        d,
        &["--max-steps", "8", "--out", "run", "--resume"],
        Some(200_000),
    );
    let log = text(&limited);
    assert!(!limited.status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("checkpoint 3 could not be written")
            && log.contains("Checkpoint 2 (step 4) is complete")
            // Whichever of its files failed first.
            && (log.contains("checkpoint/model-3") || log.contains("checkpoint/optim-3")),
        "{log}"
    );
    // Nothing newer counts as complete, and checkpoint 2 was not pruned.
    assert_eq!(latest_checkpoint(&checkpoints), Some(2));

    let resumed = train(d, &["--max-steps", "8", "--out", "run", "--resume"], None);
    let log = text(&resumed);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("resumed from checkpoint 2"), "{log}");
    let weights = |run: &str| std::fs::read(d.join(run).join("model/model.safetensors")).unwrap();
    assert!(weights("run") == weights("full"), "resumed weights differ");
    assert_eq!(latest_checkpoint(&checkpoints), Some(4));
    // keep_last 2: an uninterrupted run keeps 3 and 4; 1 and 2 went once newer ones were
    // complete (2's deletion waited for 4, asked for at the same time, until the end).
    let kept: Vec<String> = std::fs::read_dir(d.join("full/decpo/checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("model-"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(kept, ["model-3.mpk", "model-4.mpk"]);
}
