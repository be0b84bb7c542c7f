//! Errors of the data path. Each names the file and the line, row or item, and the field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A problem with the file as a whole (unknown format, not a JSON array, no header...).
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A problem with one row: `place` is e.g. "line 12", "record 4" or "item 7".
    #[error("{path} {place}: {message}")]
    Row {
        path: PathBuf,
        place: String,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, DataError>;
