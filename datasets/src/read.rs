//! Reading rows from preference files: JSON lines, JSON arrays, CSV (each optionally gzip-compressed,
//! recognised by magic bytes whatever the extension) and Parquet.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{DataError, Result};

/// One row of a file: its fields, and where it is (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// "line 12" (JSON lines), "item 3" (JSON array, 0-based), "record 5" (CSV, 1-based data
    /// record) or "row 7" (Parquet, 0-based).
    pub place: String,
    pub fields: Map<String, Value>,
}

/// The file's bytes, gunzipped if they start with the gzip magic number.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let io = |cause| DataError::Io {
        path: path.into(),
        cause,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads every row of `path`. The format comes from the extension (`.parquet`, or `.jsonl`,
/// `.json`, `.csv`, each optionally followed by `.gz`); a `.json` file holding JSON lines is read
/// as such.
pub fn read_rows(path: &Path) -> Result<Vec<RawRow>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".parquet") {
        return read_parquet(path);
    }
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let bytes = read_bytes(path)?;
    if name.ends_with(".csv") {
        read_csv(path, &bytes)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        read_json_lines(path, &bytes)
    } else if name.ends_with(".json") {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => read_json_array(path, &bytes),
            _ => read_json_lines(path, &bytes),
        }
    } else {
        Err(DataError::File {
            path: path.into(),
            message: "unknown format: expected .jsonl, .json, .csv (optionally .gz) or .parquet"
                .into(),
        })
    }
}

fn row_err(path: &Path, place: &str, message: impl Into<String>) -> DataError {
    DataError::Row {
        path: path.into(),
        place: place.into(),
        message: message.into(),
    }
}

fn read_json_lines(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let place = format!("line {}", i + 1);
        let line = std::str::from_utf8(line)
            .map_err(|e| row_err(path, &place, format!("invalid UTF-8: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(value) => rows.push(object_row(path, place, value)?),
            Err(e) => return Err(row_err(path, &place, format!("malformed JSON: {e}"))),
        }
    }
    Ok(rows)
}

fn read_json_array(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::File {
        path: path.into(),
        message: format!("invalid UTF-8: {e}"),
    })?;
    let items: Vec<Value> = serde_json::from_str(text).map_err(|e| DataError::File {
        path: path.into(),
        message: format!("malformed JSON array: {e}"),
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| object_row(path, format!("item {i}"), item))
        .collect()
}

fn read_csv(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers = reader.headers().map_err(|e| DataError::File {
        path: path.into(),
        message: format!("CSV header: {e}"),
    })?;
    let headers: Vec<String> = headers.iter().map(String::from).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let place = format!("record {}", i + 1);
        let record = record.map_err(|e| {
            let line = e
                .position()
                .map(|p| format!(" (line {})", p.line()))
                .unwrap_or_default();
            row_err(path, &place, format!("malformed CSV{line}: {e}"))
        })?;
        let fields = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(RawRow { place, fields });
    }
    Ok(rows)
}

/// The `parquet` crate has panicked on corrupt files instead of returning an error (57 did on two
/// that fuzzing found here, apache/arrow-rs#9434; 60 returns errors for them); a panic still
/// becomes an error naming the file, not a crash.
fn read_parquet(path: &Path) -> Result<Vec<RawRow>> {
    catch_quietly(|| read_parquet_rows(path)).unwrap_or_else(|why| {
        Err(DataError::File {
            path: path.into(),
            message: format!("corrupt Parquet file: the reader failed ({why})"),
        })
    })
}

thread_local! {
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(its message)` without the panic hook's report on stderr
/// (the message goes into the error instead); a panic on another thread is reported as before.
/// Under cargo-fuzz the hook is libFuzzer's, which would count the caught panic as a crash.
pub fn catch_quietly<T>(
    f: impl FnOnce() -> T + std::panic::UnwindSafe,
) -> std::result::Result<T, String> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CATCHING.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(f);
    CATCHING.with(|c| c.set(was));
    out.map_err(|panic| panic_message(panic.as_ref()).to_string())
}

/// The message a caught panic carries (`panic!`'s text), or "no message".
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}

fn read_parquet_rows(path: &Path) -> Result<Vec<RawRow>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file_err = |message: String| DataError::File {
        path: path.into(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|cause| DataError::Io {
        path: path.into(),
        cause,
    })?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| file_err(format!("Parquet: {e}")))?;
    rows.enumerate()
        .map(|(i, row)| {
            let place = format!("row {i}");
            let row = row.map_err(|e| row_err(path, &place, format!("Parquet: {e}")))?;
            object_row(path, place, row.to_json_value())
        })
        .collect()
}

/// A row from a value that must be an object (a JSON object, a Parquet record).
fn object_row(path: &Path, place: String, value: Value) -> Result<RawRow> {
    match value {
        Value::Object(fields) => Ok(RawRow { place, fields }),
        other => Err(row_err(
            path,
            &place,
            format!("expected an object, got {}", kind(&other)),
        )),
    }
}

/// A JSON value's kind, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_caught_panic_is_its_message_and_the_code_after_it_runs() {
        let caught = catch_quietly(|| -> u32 { panic!("the reader failed at {}", 7) });
        assert_eq!(caught, Err("the reader failed at 7".to_string()));
        assert_eq!(catch_quietly(|| 3), Ok(3));
        // The flag is cleared: a panic after it is reported and caught as usual.
        assert!(!CATCHING.with(std::cell::Cell::get));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any bytes under any supported extension give rows or an error naming the file, never a
        /// panic; gzip-wrapped garbage too.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), gz in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let bytes = if gz {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&bytes).unwrap();
                e.finish().unwrap()
            } else {
                bytes
            };
            for ext in ["jsonl", "json", "csv", "parquet"] {
                let path = dir.path().join(format!("f.{ext}"));
                std::fs::write(&path, &bytes).unwrap();
                if let Err(e) = read_rows(&path) {
                    prop_assert!(e.to_string().contains(&format!("f.{ext}")), "{e}");
                }
            }
        }

        /// Well-formed JSON lines of string fields read back exactly.
        #[test]
        fn json_lines_round_trip(values in proptest::collection::vec("\\PC{0,12}", 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rows.jsonl");
            let text: Vec<String> = values.iter().map(|v| serde_json::json!({"prompt": v}).to_string()).collect();
            std::fs::write(&path, text.join("\n")).unwrap();
            let rows = read_rows(&path).unwrap();
            prop_assert_eq!(rows.len(), values.len());
            for (row, v) in rows.iter().zip(&values) {
                prop_assert_eq!(row.fields["prompt"].as_str(), Some(v.as_str()));
            }
        }
    }
}
