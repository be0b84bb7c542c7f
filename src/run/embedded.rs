//! The embedded default job: a small Llama (config and word-level tokenizer compiled in, weights
//! drawn from the seed) and 600 "sort the digits" preference pairs (`datasets/default/`, made by
//! `scripts/make_default_data.py`): a short SFT, then DecPO, on the CPU in minutes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::Backend;
use decpo_alignment::train::session::TrainSettings;
use decpo_datasets::default_job::{CONFIG, PAIRS, TOKENIZER, TOKENIZER_CONFIG};
use decpo_model::weights::save::write_file_atomically;
use decpo_model::{Llama, LlamaConfig, LlamaTokenizer};

use super::config::{RunConfig, SftPhase};

/// The default job's configuration (the regularizer is added once the depth is known).
pub fn config() -> RunConfig {
    let mut c = RunConfig {
        out: PathBuf::from("runs/default"),
        sft: Some(SftPhase {
            steps: 120,
            learning_rate: 3e-3,
        }),
        lora: None,
        train: TrainSettings {
            learning_rate: 1e-3,
            warmup_steps: 10,
            epochs: 8,
            micro_batch: 16,
            accumulation: 1,
            save_every: 50,
            ..TrainSettings::default()
        },
        ..RunConfig::default()
    };
    c.data.max_prompt_length = 16;
    c.data.max_length = 32;
    c
}

/// Writes `text` to `path` unless it already holds exactly that.
fn materialise(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    write_file_atomically(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The small Llama's word-level tokenizer, its files written to `out/embedded-model`.
pub fn tokenizer(out: &Path) -> anyhow::Result<LlamaTokenizer> {
    let dir = out.join("embedded-model");
    materialise(&dir.join("tokenizer.json"), TOKENIZER)?;
    materialise(&dir.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    Ok(LlamaTokenizer::from_hf_dir(&dir)?)
}

/// The small Llama, initialised from `seed`, and its tokenizer. The weights are drawn on the host
/// ([`LlamaConfig::init_seeded`]), so a seed gives the same model on every backend.
pub fn model<B: Backend>(
    out: &Path,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<(Llama<B>, LlamaTokenizer)> {
    let tok = tokenizer(out)?;
    let config = LlamaConfig::from_hf_json(CONFIG, "embedded config.json")?;
    Ok((config.init_seeded(seed, device), tok))
}

/// The embedded pairs as a file in the run directory (the data path reads files).
pub fn data(out: &Path) -> anyhow::Result<PathBuf> {
    let path = out.join("embedded-data").join("sort-digits.jsonl");
    materialise(&path, PAIRS)?;
    Ok(path)
}
