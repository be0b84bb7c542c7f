//! A cache of tokenized pairs, so that a second run with the same data, tokenizer and settings
//! starts at once. Entries are JSON files named by a SHA-256 of all three, written atomically.

use std::path::{Path, PathBuf};

use decpo_model::weights::save::write_file_atomically;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::tokenize::{TokenizeReport, TokenizedPair};

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    pairs: Vec<TokenizedPair>,
    report: TokenizeReport,
}

/// The cache file for `data` tokenized by `tokenizer_json` with `settings` (anything that changes
/// the result: task, lengths, column mapping...).
pub fn cache_path(
    dir: &Path,
    data: &Path,
    tokenizer_json: &str,
    settings: &str,
) -> Result<PathBuf> {
    let bytes = std::fs::read(data).map_err(|cause| DataError::Io {
        path: data.into(),
        cause,
    })?;
    let mut h = Sha256::new();
    for part in [
        bytes.as_slice(),
        tokenizer_json.as_bytes(),
        settings.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!("tokenized-{hex}.json")))
}

/// The cached result, if present and readable (a damaged entry is ignored and rewritten later).
pub fn load(path: &Path) -> Option<(Vec<TokenizedPair>, TokenizeReport)> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: Entry = serde_json::from_str(&text).ok()?;
    Some((entry.pairs, entry.report))
}

/// Stores a result: written to a temporary file, then renamed over `path`.
pub fn store(path: &Path, pairs: &[TokenizedPair], report: &TokenizeReport) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |cause| DataError::Io { path: p, cause }
    };
    let entry = Entry {
        pairs: pairs.to_vec(),
        report: report.clone(),
    };
    let text = serde_json::to_string(&entry).expect("tokenized pairs serialise");
    write_file_atomically(path, text.as_bytes()).map_err(io(path))
}
