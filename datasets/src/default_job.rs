//! The files of the embedded default job (`datasets/default/`, made by
//! `scripts/make_default_data.py`): a small Llama's config and word-level tokenizer, and 600
//! "sort the digits" preference pairs, compiled into the crate.

/// The small Llama's `config.json`.
pub const CONFIG: &str = include_str!("../default/config.json");
/// Its `tokenizer.json`.
pub const TOKENIZER: &str = include_str!("../default/tokenizer.json");
/// Its `tokenizer_config.json`.
pub const TOKENIZER_CONFIG: &str = include_str!("../default/tokenizer_config.json");
/// The preference pairs, TRL's explicit-prompt JSON lines.
pub const PAIRS: &str = include_str!("../default/pairs.jsonl");
