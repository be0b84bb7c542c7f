//! The fuzz targets: every parser that reads a user's file, fed arbitrary bytes as that file.
//! A target returns whatever the parser says (an error is a fine answer); what it must never do
//! is panic, hang or allocate without bound. `fuzz/` drives them with cargo-fuzz (libFuzzer,
//! nightly) for long runs; `tests/fuzz_smoke.rs` drives them on stable with the seed corpora
//! and simple mutations for a few seconds each, so that they keep building and stay clean.

use std::cell::RefCell;
use std::path::PathBuf;

use decpo_datasets::tokenize::render;
use decpo_datasets::{Task, Template, TokenizeConfig, load_pairs, tokenize_pairs};
use decpo_model::tokenizer::ChatMessage;
use decpo_model::weights::gguf::GgufFile;
use decpo_model::{LlamaTokenizer, load_pretrained};

use crate::backend::{Backend, device};
use crate::run::RunConfig;

/// A fuzz target: its name (the cargo-fuzz target in `fuzz/` and its corpus folder) and its
/// entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 8] = [
    ("gguf", gguf),
    ("hf_dir", hf_dir),
    ("rows_jsonl", |d| rows("jsonl", d)),
    ("rows_json", |d| rows("json", d)),
    ("rows_csv", |d| rows("csv", d)),
    ("rows_parquet", |d| rows("parquet", d)),
    ("chat_template", chat_template),
    ("run_config", run_config),
];

/// Separates the files of one input in the targets that read several ([`split_files`]).
pub const FILE_SEPARATOR: &[u8] = b"\n--decpo-fuzz-file--\n";

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// This thread's scratch folder, which every call reuses.
fn scratch_dir() -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let dir = s.get_or_insert_with(|| tempfile::tempdir().expect("a scratch folder"));
        dir.path().to_path_buf()
    })
}

/// `data` written as `name` in this thread's scratch folder.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("the scratch folder takes writes");
    path
}

/// The parts of `data` between [`FILE_SEPARATOR`]s, at most `n` (the last keeps the rest).
pub fn split_files(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < n {
        let Some(at) = rest
            .windows(FILE_SEPARATOR.len())
            .position(|w| w == FILE_SEPARATOR)
        else {
            break;
        };
        parts.push(&rest[..at]);
        rest = &rest[at + FILE_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// What a pipeline does with a tokenizer it loaded: encode, decode, render a chat.
fn use_tokenizer(tok: &LlamaTokenizer) {
    if let Ok(ids) = tok.encode("Hello, world!\n<|im_end|> 12 é", true) {
        let _ = tok.decode(&ids, false);
    }
    let _ = tok.apply_chat_template(&[ChatMessage::new("user", "Hi")], true);
}

/// A GGUF file: header, metadata, tensor infos, the tokenizer from its metadata, the model
/// config, and every tensor dequantised into the model.
pub fn gguf(data: &[u8]) {
    let path = scratch("model.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let _ = file.llama_config();
    if let Ok(tok) = LlamaTokenizer::from_gguf(&file) {
        use_tokenizer(&tok);
    }
    drop(file);
    let _ = load_pretrained::<Backend>(&path, &device());
}

/// A Hugging Face directory: `config.json`, `model.safetensors` and `tokenizer.json`, separated
/// by [`FILE_SEPARATOR`] in the input (a missing tokenizer is allowed, as a user's may be).
pub fn hf_dir(data: &[u8]) {
    let parts = split_files(data, 3);
    let dir = scratch_dir().join("hf");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch folder takes a folder");
    let names = ["config.json", "model.safetensors", "tokenizer.json"];
    for (name, part) in names.iter().zip(&parts) {
        std::fs::write(dir.join(name), part).expect("the scratch folder takes writes");
    }
    if let Ok(p) = load_pretrained::<Backend>(&dir, &device())
        && let Some(tok) = p.tokenizer
    {
        use_tokenizer(&tok);
    }
}

/// A preference file in format `ext`, through every task adapter (stopping at an invalid row and
/// skipping them), then laid out in each template and tokenized with the embedded tokenizer.
pub fn rows(ext: &str, data: &[u8]) {
    let path = scratch(&format!("pairs.{ext}"), data);
    let tok = embedded_tokenizer();
    for name in Task::NAMES {
        let task = Task::from_name(name).expect("a built-in task");
        // Skipping invalid rows reads the file again only where stopping at one failed.
        let loaded = load_pairs(&path, &task, false).or_else(|_| load_pairs(&path, &task, true));
        if let Ok(loaded) = loaded {
            tokenize(&tok, &loaded.pairs[..loaded.pairs.len().min(8)]);
        }
    }
}

fn tokenize(tok: &LlamaTokenizer, pairs: &[decpo_datasets::PreferencePair]) {
    for template in [Template::Chat, Template::Plain, Template::Raw] {
        let config = TokenizeConfig {
            max_prompt_length: 16,
            max_length: 24,
            eos_id: 1,
            template,
        };
        let _ = tokenize_pairs(tok, pairs, &config, |_| {});
    }
}

/// A chat template as a user's `tokenizer_config.json` gives it (first part) rendering the
/// conversational rows of a JSONL file (second part), as the data path renders them.
pub fn chat_template(data: &[u8]) {
    let parts = split_files(data, 2);
    let Ok(template) = std::str::from_utf8(parts[0]) else {
        return;
    };
    let mut tok = embedded_tokenizer();
    tok.chat_template = Some(template.to_string());
    let path = scratch("chat.jsonl", parts.get(1).copied().unwrap_or_default());
    let trl = Task::from_name("trl").expect("trl");
    if let Ok(loaded) = load_pairs(&path, &trl, true) {
        for pair in loaded.pairs.iter().take(8) {
            let _ = render(&tok, pair);
        }
    }
    use_tokenizer(&tok);
}

/// A run configuration (`--config`, a run's `config.toml`), read and checked.
pub fn run_config(data: &[u8]) {
    let path = scratch("config.toml", data);
    if let Ok(c) = RunConfig::read(&path) {
        let _ = c.data.validate();
        let _ = c.data.task();
        let _ = c.objective.validate(30);
    }
}

/// The embedded model's tokenizer (word level, no chat template), loaded once per thread.
fn embedded_tokenizer() -> LlamaTokenizer {
    thread_local! {
        static TOK: LlamaTokenizer = {
            crate::run::embedded::tokenizer(&scratch_dir()).expect("the embedded tokenizer loads")
        };
    }
    TOK.with(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_splits_into_files_at_the_separator() {
        let sep = std::str::from_utf8(FILE_SEPARATOR).unwrap();
        let data = format!("a{sep}b{sep}c{sep}d");
        assert_eq!(
            split_files(data.as_bytes(), 3),
            [&b"a"[..], b"b", b"c\n--decpo-fuzz-file--\nd"]
        );
        assert_eq!(split_files(b"only", 3), [&b"only"[..]]);
    }
}
