//! A run's checkpoints on disk (`<run>/checkpoint/{model,optim,scheduler}-<k>.mpk`, interval
//! `k`): each file written to a temporary file and renamed, a checkpoint counted only when its
//! three files exist, and an older one deleted only once a newer one is complete.
//!
//! burn-train writes the three files on background threads, and its strategies ask to delete an
//! older checkpoint in the same breath as they ask for a new one. Should the new one fail to be
//! written (a full disk), carrying out that deletion could leave nothing to resume from, so
//! [`KeepComplete`] holds deletions back until a newer checkpoint is complete, and the loop
//! carries out the last ones ([`Checkpoints::prune`]) once every write has finished.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::record::{
    FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder, RecorderError,
};
use burn::tensor::backend::Backend;
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The files of one checkpoint, by prefix.
const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// burn's named MessagePack recorder at full precision, writing through a temporary file that is
/// renamed into place: a crash never leaves a half-written checkpoint file.
#[derive(Debug, Default, Clone)]
pub struct AtomicRecorder {
    inner: NamedMpkFileRecorder<FullPrecisionSettings>,
}

impl<B: Backend> Recorder<B> for AtomicRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        let io = |e: std::io::Error| RecorderError::Unknown(format!("{}: {e}", file.display()));
        let name = file.file_name().ok_or_else(|| {
            RecorderError::Unknown(format!("{}: not a file name", file.display()))
        })?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let staging = dir.join(".partial");
        std::fs::create_dir_all(&staging).map_err(io)?;
        let tmp = staging.join(name);
        Recorder::<B>::save_item(&self.inner, item, tmp.clone()).map_err(|e| {
            let e = match e {
                RecorderError::Unknown(message) => message,
                e => e.to_string(),
            };
            RecorderError::Unknown(format!("writing {}: {e}", file.display()))
        })?;
        let ext =
            <NamedMpkFileRecorder<FullPrecisionSettings> as FileRecorder<B>>::file_extension();
        let written = tmp.with_extension(ext);
        std::fs::File::open(&written)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&written, file.with_extension(ext)).map_err(io)
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        Recorder::<B>::load_item(&self.inner, file)
    }
}

impl<B: Backend> FileRecorder<B> for AtomicRecorder {
    fn file_extension() -> &'static str {
        <NamedMpkFileRecorder<FullPrecisionSettings> as FileRecorder<B>>::file_extension()
    }
}

/// The newest checkpoint interval in `run_dir/checkpoint` whose three files all exist.
pub fn latest_checkpoint(run_dir: &Path) -> Option<usize> {
    complete(&run_dir.join("checkpoint")).last().copied()
}

/// The intervals in `dir` whose three files all exist, in order.
fn complete(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut done: Vec<usize> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let k = name.strip_prefix("scheduler-")?.strip_suffix(".mpk")?;
            k.parse::<usize>().ok()
        })
        .filter(|k| {
            PARTS
                .iter()
                .all(|p| dir.join(format!("{p}-{k}.mpk")).exists())
        })
        .collect();
    done.sort_unstable();
    done
}

/// A run's checkpoint directory and the deletions held back until something newer is complete,
/// shared by [`KeepComplete`] and the training loop.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    held: Arc<Mutex<Vec<usize>>>,
}

impl Checkpoints {
    /// The checkpoints of the run in `run_dir`.
    pub fn of_run(run_dir: &Path) -> Self {
        Self {
            dir: run_dir.join("checkpoint"),
            held: Arc::default(),
        }
    }

    /// The newest complete checkpoint interval.
    pub fn latest(&self) -> Option<usize> {
        complete(&self.dir).last().copied()
    }

    /// Holds back the deletion of `intervals`.
    fn hold(&self, intervals: impl IntoIterator<Item = usize>) {
        self.held.lock().expect("held lock").extend(intervals);
    }

    /// The held deletions that a newer complete checkpoint now covers, no longer held.
    fn release(&self) -> Vec<usize> {
        let newest = self.latest();
        let mut held = self.held.lock().expect("held lock");
        let (go, stay) = held.iter().partition(|&&k| newest.is_some_and(|n| n > k));
        *held = stay;
        go
    }

    /// Deletes the held checkpoints that a newer complete one covers. Call it when no write is
    /// in flight (the end of a run); the others stay on disk.
    pub fn prune(&self) -> std::io::Result<()> {
        for k in self.release() {
            for p in PARTS {
                match std::fs::remove_file(self.dir.join(format!("{p}-{k}.mpk"))) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Another checkpointing strategy whose deletions wait until a newer checkpoint is complete.
pub struct KeepComplete<S> {
    pub inner: S,
    pub checkpoints: Checkpoints,
}

impl<S: CheckpointingStrategy> CheckpointingStrategy for KeepComplete<S> {
    fn checkpointing(
        &mut self,
        epoch: usize,
        store: &EventStoreClient,
    ) -> Vec<CheckpointingAction> {
        let mut actions = Vec::new();
        let mut deletes = Vec::new();
        for action in self.inner.checkpointing(epoch, store) {
            match action {
                CheckpointingAction::Delete(k) => deletes.push(k),
                save => actions.push(save),
            }
        }
        self.checkpoints.hold(deletes);
        actions.extend(
            self.checkpoints
                .release()
                .into_iter()
                .map(CheckpointingAction::Delete),
        );
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, k: usize, parts: &[&str]) {
        for p in parts {
            std::fs::write(dir.join(format!("{p}-{k}.mpk")), b"x").unwrap();
        }
    }

    #[test]
    fn a_checkpoint_counts_when_its_three_files_exist() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("checkpoint");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(latest_checkpoint(run.path()), None);
        write(&dir, 1, &PARTS);
        write(&dir, 2, &PARTS);
        // Interval 3's schedule was written, its model and optimizer were not (a full disk).
        write(&dir, 3, &["scheduler"]);
        write(&dir, 10, &["model", "optim"]);
        assert_eq!(complete(&dir), [1, 2]);
        assert_eq!(latest_checkpoint(run.path()), Some(2));
    }

    #[test]
    fn deletions_wait_for_a_newer_complete_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("checkpoint");
        std::fs::create_dir(&dir).unwrap();
        let c = Checkpoints::of_run(run.path());
        write(&dir, 1, &PARTS);
        write(&dir, 2, &PARTS);
        // Keeping the last one: interval 3 is asked for and 2 is to go, but 3 is not written yet.
        c.hold([1, 2]);
        assert_eq!(c.release(), [1]);
        // Interval 3 failed: 2 stays however often the loop asks.
        write(&dir, 3, &["scheduler"]);
        assert_eq!(c.release(), Vec::<usize>::new());
        c.prune().unwrap();
        assert_eq!(complete(&dir), [1, 2]);
        // Once 3 is complete, 2 goes at the end of the run; 1's files, already gone, are no error.
        write(&dir, 3, &["model", "optim"]);
        std::fs::remove_file(dir.join("model-1.mpk")).unwrap();
        c.hold([1]);
        c.prune().unwrap();
        assert_eq!(complete(&dir), [3]);
        assert!(!dir.join("optim-1.mpk").exists());
    }
}
