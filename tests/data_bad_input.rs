//! Bad preference files: one clear error naming file, line or row, and field; `skip_invalid`
//! skips and counts instead. Also the TRL formats and the toxicity-pairs adapter on small files
//! written here.

mod common;

use std::path::{Path, PathBuf};

use decpo_datasets::{ColumnMap, Task, Turns, load_pairs};
use decpo_model::ChatMessage;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn err(path: &Path, task: &Task) -> String {
    match load_pairs(path, task, false) {
        Ok(l) => panic!(
            "{} loaded {} pairs, expected an error",
            path.display(),
            l.pairs.len()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_kind_of_bad_row_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let trl = Task::Trl(ColumnMap::default());
    let good = r#"{"prompt": "Say hi", "chosen": " hi", "rejected": " go away"}"#;

    let p = write(
        dir.path(),
        "malformed.jsonl",
        format!("{good}\n{{\"prompt\": \"x\", \n").as_bytes(),
    );
    let e = err(&p, &trl);
    assert!(e.contains("malformed.jsonl line 2: malformed JSON"), "{e}");

    let p = write(
        dir.path(),
        "missing.jsonl",
        format!("{good}\n{good}\n{{\"prompt\": \"a\", \"chosen\": \"b\"}}\n").as_bytes(),
    );
    let e = err(&p, &trl);
    assert!(
        e.contains("missing.jsonl line 3: field `rejected` is missing"),
        "{e}"
    );

    let p = write(
        dir.path(),
        "empty.jsonl",
        br#"{"prompt": "a", "chosen": "  ", "rejected": "b"}"#,
    );
    let e = err(&p, &trl);
    assert!(
        e.contains("empty.jsonl line 1: field `chosen`: the completion is empty"),
        "{e}"
    );

    let p = write(
        dir.path(),
        "same.jsonl",
        br#"{"prompt": "a", "chosen": "b", "rejected": "b"}"#,
    );
    let e = err(&p, &trl);
    assert!(
        e.contains("same.jsonl line 1: chosen and rejected are identical"),
        "{e}"
    );

    let mut bytes = format!("{good}\n").into_bytes();
    bytes.extend(b"{\"prompt\": \"caf\xe9\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
    let p = write(dir.path(), "latin1.jsonl", &bytes);
    let e = err(&p, &trl);
    assert!(e.contains("latin1.jsonl line 2: invalid UTF-8"), "{e}");

    let p = write(
        dir.path(),
        "typed.jsonl",
        br#"{"prompt": "a", "chosen": 3, "rejected": "b"}"#,
    );
    let e = err(&p, &trl);
    assert!(e.contains("typed.jsonl line 1: field `chosen` should be a string or a list of messages, got a number"), "{e}");

    // The authors' CSV names its columns question/chosen/reject: without a mapping, a clear error.
    let csv = "question,chosen,reject\nWhat now?,Breathe.,Panic.\n";
    let p = write(dir.path(), "authors.csv", csv.as_bytes());
    let e = err(&p, &trl);
    assert!(
        e.contains("authors.csv record 1: field `rejected` is missing"),
        "{e}"
    );
    let mapped = Task::Trl(ColumnMap {
        prompt: "question".into(),
        chosen: "chosen".into(),
        rejected: "reject".into(),
    });
    let loaded = load_pairs(&p, &mapped, false).unwrap();
    assert_eq!(loaded.pairs[0].prompt, Turns::Text("What now?".into()));
    assert_eq!(loaded.pairs[0].rejected, Turns::Text("Panic.".into()));

    let p = write(dir.path(), "notes.txt", b"hello");
    let e = err(&p, &trl);
    assert!(e.contains("notes.txt: unknown format"), "{e}");
}

#[test]
fn skip_invalid_counts_by_reason_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        r#"{"prompt": "a", "chosen": "b", "rejected": "c"}"#,
        r#"{"prompt": "a", "chosen": "", "rejected": "c"}"#,
        r#"{"prompt": "a", "chosen": "b", "rejected": "b"}"#,
        r#"{"prompt": "a", "chosen": "b"}"#,
        r#"{"prompt": "d", "chosen": "e", "rejected": "f"}"#,
    ];
    let p = write(dir.path(), "mixed.jsonl", rows.join("\n").as_bytes());
    let loaded = load_pairs(&p, &Task::Trl(ColumnMap::default()), true).unwrap();
    assert_eq!(loaded.rows, 5);
    assert_eq!(loaded.pairs.len(), 2);
    let counts: Vec<(String, usize)> = loaded.invalid.into_iter().collect();
    let want = [
        ("chosen_equals_rejected", 1),
        ("empty_completion", 1),
        ("missing_field", 1),
    ];
    assert_eq!(counts, want.map(|(k, v)| (k.to_string(), v)).to_vec());
}

#[test]
fn trl_implicit_and_conversational_formats() {
    let dir = tempfile::tempdir().unwrap();
    let implicit = r#"{"chosen": "\n\nHuman: hi\n\nAssistant: hello!", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}"#;
    let conv = r#"{"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
                  "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}"#;
    let p = write(
        dir.path(),
        "trl.json",
        format!("[{implicit}, {}]", conv.replace('\n', " ")).as_bytes(),
    );
    let loaded = load_pairs(&p, &Task::Trl(ColumnMap::default()), false).unwrap();
    assert_eq!(
        loaded.pairs[0].prompt,
        Turns::Text("\n\nHuman: hi\n\nAssistant:".into())
    );
    assert_eq!(loaded.pairs[0].chosen, Turns::Text(" hello!".into()));
    assert_eq!(
        loaded.pairs[1].prompt,
        Turns::Chat(vec![ChatMessage::new("user", "hi")])
    );
    assert_eq!(
        loaded.pairs[1].rejected,
        Turns::Chat(vec![ChatMessage::new("assistant", "go away")])
    );
    assert_eq!(loaded.pairs[1].source, "trl.json item 1");
}

#[test]
fn toxicity_pairs_and_gzip_by_magic_bytes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let rows = r#"{"prompt_text": "The weather today", "unpert_gen_text": " is sunny and mild.", "pert_gen_text": " is awful, you idiot."}
{"prompt_text": "My neighbour", "unpert_gen_text": " waters her garden.", "pert_gen_text": " is a complete moron."}
"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(rows.as_bytes()).unwrap();
    // A gzip file is recognised by content even with a misleading extension.
    let p = write(dir.path(), "toxicity.jsonl", &gz.finish().unwrap());
    let loaded = load_pairs(&p, &Task::ToxicityPairs, false).unwrap();
    assert_eq!(loaded.pairs.len(), 2);
    assert_eq!(loaded.pairs[1].prompt, Turns::Text("My neighbour".into()));
    assert_eq!(
        loaded.pairs[1].chosen,
        Turns::Text(" waters her garden.".into())
    );
    assert_eq!(
        loaded.pairs[1].rejected,
        Turns::Text(" is a complete moron.".into())
    );
}

/// Corrupt Parquet files found by the fuzz target `rows_parquet` (mutations of
/// `fixtures/data/conversational.parquet`): a dictionary index past its dictionary and column
/// metadata of the wrong type (the `parquet` crate 57 panicked on both, apache/arrow-rs#9434),
/// and a footer list declaring 1.8 billion schema elements (57 reserved 175 GB for them, an abort,
/// apache/arrow-rs#10920). Reading one is an error naming the file, and `train` says only that.
#[test]
fn a_corrupt_parquet_file_is_an_error_naming_the_file() {
    let trl = Task::from_name("trl").unwrap();
    let cases = [
        (
            "corrupt-dictionary-index.parquet",
            "row 0: Parquet: Parquet error: Invalid or corrupted RLE value 2 exceeds bit width 1",
        ),
        (
            "corrupt-column-metadata.parquet",
            "not a readable Parquet file: Parquet error: Unexpected struct field type Struct",
        ),
        (
            "corrupt-huge-list.parquet",
            "not a readable Parquet file: Parquet error: Thrift list size 1828709737 exceeds",
        ),
    ];
    for (name, expected) in cases {
        let path = common::fixture(&format!("data/{name}"));
        let said = err(&path, &trl);
        assert!(said.contains(name) && said.contains(expected), "{said}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_train"))
            .args(["--task", "trl", "--sft-steps", "0", "--data"])
            .arg(&path)
            .env_remove("RUST_BACKTRACE")
            .current_dir(tempfile::tempdir().unwrap().path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
