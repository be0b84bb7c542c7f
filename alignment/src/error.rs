//! Errors of the alignment crate. Each names the setting, file or stage it is about.

use std::path::PathBuf;

/// Everything that can go wrong when checking settings, training, restoring or judging.
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// A setting out of its range; `field` is its name in the run's configuration.
    #[error("{field}: {message}")]
    Setting { field: String, message: String },
    // As in the model crate, causes are part of the message (anyhow prints each thing once).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Model(#[from] decpo_model::ModelError),
    /// Nothing to train on, or on nothing.
    #[error("{0}")]
    Empty(String),
    /// A run stopped by a bad value (a NaN loss or gradient norm), with the step and micro-batch.
    #[error("training stopped: {0}")]
    Stopped(String),
    #[error("judge: {0}")]
    Judge(String),
}

impl AlignError {
    pub(crate) fn setting(field: &str, message: impl Into<String>) -> Self {
        Self::Setting {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, AlignError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AlignError {
    let path = path.into();
    move |cause| AlignError::Io { path, cause }
}
