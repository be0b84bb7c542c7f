//! Errors of the model crate. Each names the file, tensor or field it is about.

use std::path::PathBuf;

/// Everything that can go wrong when reading configs, weights or tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // The causes are part of the message rather than `#[source]`, so that an error chain printed
    // by anyhow says each thing once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: invalid JSON: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("invalid model config ({origin}): {message}")]
    Config { origin: String, message: String },
    #[error("{path}: corrupt or truncated file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensors not used by the model: {names}")]
    UnexpectedTensors { path: PathBuf, names: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has unsupported type {dtype}")]
    UnsupportedDType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: unsupported: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("tokenizer ({origin}): {message}")]
    Tokenizer { origin: String, message: String },
    #[error("chat template: {0}")]
    Template(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |cause| ModelError::Io { path, cause }
}
