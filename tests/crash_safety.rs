//! `train` killed with SIGKILL at many moments of one short job (mid-step, inside a checkpoint
//! write, inside the export), each time continued with `--resume`, finishes with the weights of
//! a run that was never interrupted, byte for byte; a checkpoint whose files were not all
//! renamed into place is never the one resumed from.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use decpo_alignment::train::checkpoint::latest_checkpoint;

const ARGS: [&str; 6] = ["--sft-steps", "0", "--max-steps", "24", "--save-every", "2"];

fn spawn(dir: &Path, out: &str, resume: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args(ARGS).args(["--out", out]).current_dir(dir);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("train starts")
}

/// Names and sizes of the files in `dir` (none when it does not exist).
fn files(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len()))
        })
        .collect()
}

/// Where a kill lands.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// This long after the start.
    After(Duration),
    /// As soon as a checkpoint file is being written (its staging file appears or grows).
    InCheckpointWrite,
    /// As soon as the export's temporary directory appears.
    InExport,
}

/// Runs until `moment` and kills the process there; `false` when it finished first.
fn kill_at(dir: &Path, run: &Path, moment: Moment) -> bool {
    let staging = run.join("decpo/checkpoint/.partial");
    let before = files(&staging);
    let mut child = spawn(dir, run.file_name().unwrap().to_str().unwrap(), true);
    let start = Instant::now();
    loop {
        let now = match moment {
            Moment::After(t) => start.elapsed() >= t,
            Moment::InCheckpointWrite => files(&staging) != before,
            Moment::InExport => files(run).keys().any(|n| n.starts_with(".model.partial")),
        };
        if now {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{moment:?}: the run failed on its own");
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn killed_at_many_moments_the_run_always_resumes_to_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let start = Instant::now();
    let full = spawn(d, "full", false).wait_with_output().unwrap();
    assert!(full.status.success());
    let whole = start.elapsed();

    // Kills at moments spread over the run's length, inside checkpoint writes and inside the
    // export, in turn; each attempt resumes from what the one before left. An attempt that
    // finishes before its moment ends the chain: its weights are checked and a new chain starts.
    let weights = |r: &Path| std::fs::read(r.join("model/model.safetensors")).unwrap();
    let expected = weights(&d.join("full"));
    let cycle = [
        Moment::After(whole.mul_f64(0.2)),
        Moment::InCheckpointWrite,
        Moment::After(whole.mul_f64(0.5)),
        Moment::InCheckpointWrite,
        Moment::InExport,
    ];
    let mut chains = 0;
    let mut run = d.join("run0");
    let mut landed = Vec::new();
    for &moment in cycle.iter().cycle().take(20) {
        if kill_at(d, &run, moment) {
            landed.push(moment);
            // Whatever was being written, what resumes is a checkpoint all of whose files were
            // renamed into place.
            if let Some(k) = latest_checkpoint(&run.join("decpo")) {
                for part in ["model", "optim", "scheduler"] {
                    let f = run.join(format!("decpo/checkpoint/{part}-{k}.mpk"));
                    assert!(std::fs::metadata(&f).unwrap().len() > 0, "{}", f.display());
                }
            }
        } else {
            assert!(
                weights(&run) == expected,
                "{}: weights differ",
                run.display()
            );
            chains += 1;
            run = d.join(format!("run{chains}"));
        }
    }
    let last = spawn(d, run.file_name().unwrap().to_str().unwrap(), true)
        .wait_with_output()
        .unwrap();
    assert!(last.status.success());
    assert!(
        weights(&run) == expected,
        "{}: weights differ",
        run.display()
    );
    let count = |f: fn(&Moment) -> bool| landed.iter().filter(|m| f(m)).count();
    let in_writes = count(|m| matches!(m, Moment::InCheckpointWrite));
    let in_export = count(|m| matches!(m, Moment::InExport));
    assert!(
        landed.len() >= 12 && in_writes >= 6 && in_export >= 1,
        "too few kills landed to test anything: {landed:?}"
    );
    eprintln!(
        "{} kills ({in_writes} in checkpoint writes, {in_export} in the export) over {} chains",
        landed.len(),
        chains + 1
    );
}
