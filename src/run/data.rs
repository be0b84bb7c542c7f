//! Reading, checking, tokenizing (cached) and splitting the preference files of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use decpo_datasets::cache;
use decpo_datasets::{
    ColumnMap, LengthStats, SplitRule, Task, TokenizeConfig, TokenizeReport, TokenizedPair,
    load_pairs, split, tokenize_pairs,
};
use decpo_model::LlamaTokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// The authors' rule: the first part of each file trains, the rest evaluates.
    FileOrder,
    /// A seeded shuffle of each file before the same cut.
    Shuffle,
}

/// The `[data]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Data adapter: trl, hh-rlhf, cognitive-reframing, sycophancy-caa, ...
    pub task: String,
    /// Preference files; each is split on its own.
    pub files: Vec<PathBuf>,
    /// Evaluation files; when given, all of `files` trains.
    pub eval_files: Vec<PathBuf>,
    pub prompt_column: String,
    pub chosen_column: String,
    pub rejected_column: String,
    /// Skip and count invalid rows instead of stopping at the first.
    pub skip_invalid: bool,
    pub max_prompt_length: usize,
    pub max_length: usize,
    pub split: SplitKind,
    pub eval_fraction: f64,
    /// Where tokenized data is cached (default: ~/.cache/decpo).
    pub cache_dir: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            task: "trl".into(),
            files: Vec::new(),
            eval_files: Vec::new(),
            prompt_column: "prompt".into(),
            chosen_column: "chosen".into(),
            rejected_column: "rejected".into(),
            skip_invalid: false,
            max_prompt_length: 128,
            max_length: 256,
            split: SplitKind::FileOrder,
            eval_fraction: 0.1,
            cache_dir: None,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.files.is_empty() {
            bail!("no data: give --data (or [data] files) and --task");
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            bail!(
                "eval_fraction must be in [0, 1), got {}",
                self.eval_fraction
            );
        }
        if self.max_prompt_length == 0 || self.max_length < 2 {
            bail!("max_prompt_length must be >= 1 and max_length >= 2");
        }
        Ok(())
    }

    fn task(&self) -> anyhow::Result<Task> {
        let mut task = Task::from_name(&self.task).with_context(|| {
            format!(
                "unknown task `{}` (one of: {})",
                self.task,
                Task::NAMES.join(", ")
            )
        })?;
        if let Task::Trl(map) = &mut task {
            *map = ColumnMap {
                prompt: self.prompt_column.clone(),
                chosen: self.chosen_column.clone(),
                rejected: self.rejected_column.clone(),
            };
        }
        Ok(task)
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("decpo")
        })
    }
}

/// Everything read from one file.
struct FileData {
    path: PathBuf,
    rows: usize,
    invalid: BTreeMap<String, usize>,
    pairs: Vec<TokenizedPair>,
    report: TokenizeReport,
    cached: bool,
    secs: f64,
}

/// The prepared splits and a printable summary of how they were made.
pub struct Prepared {
    pub train: Vec<TokenizedPair>,
    pub eval: Vec<TokenizedPair>,
    pub summary: String,
}

fn prepare_file(
    data: &DataConfig,
    task: &Task,
    tok: &LlamaTokenizer,
    tokenizer_json: &str,
    config: &TokenizeConfig,
    path: &Path,
) -> anyhow::Result<FileData> {
    let start = Instant::now();
    let loaded = load_pairs(path, task, data.skip_invalid)?;
    let settings = format!("{task:?} {config:?}");
    let cache_file = cache::cache_path(&data.cache_dir(), path, tokenizer_json, &settings)?;
    let (pairs, report, cached) = match cache::load(&cache_file) {
        Some((pairs, report)) => (pairs, report, true),
        None => {
            let bar = if std::io::stderr().is_terminal() {
                ProgressBar::new(loaded.pairs.len() as u64)
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template("tokenizing {pos}/{len} {wide_bar} {eta}")
                    .expect("valid template"),
            );
            let (pairs, report) =
                tokenize_pairs(tok, &loaded.pairs, config, |n| bar.set_position(n as u64))?;
            bar.finish_and_clear();
            cache::store(&cache_file, &pairs, &report)?;
            (pairs, report, false)
        }
    };
    Ok(FileData {
        path: path.into(),
        rows: loaded.rows,
        invalid: loaded.invalid,
        pairs,
        report,
        cached,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// "reason: n, ..." or "none".
fn counts(by_reason: &BTreeMap<String, usize>) -> String {
    if by_reason.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = by_reason.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    parts.join(", ")
}

fn print_file(out: &mut String, f: &FileData, pairs_in: usize) -> std::fmt::Result {
    writeln!(out, "{}", f.path.display())?;
    writeln!(out, "  rows read            {}", f.rows)?;
    writeln!(out, "  invalid rows         {}", counts(&f.invalid))?;
    writeln!(
        out,
        "  pairs kept           {} of {pairs_in}",
        f.pairs.len()
    )?;
    writeln!(out, "  dropped              {}", counts(&f.report.dropped))?;
    writeln!(
        out,
        "  prompt not a token prefix of prompt+completion: {}",
        f.report.prompt_not_token_prefix
    )?;
    writeln!(
        out,
        "  truncated            prompts {}, completions {}",
        f.report.prompt_truncated, f.report.completion_truncated
    )?;
    let how = if f.cached {
        "from the cache".to_string()
    } else {
        format!("{:.0} pairs/s", pairs_in as f64 / f.secs)
    };
    writeln!(out, "  prepared in          {:.2} s ({how})", f.secs)?;
    Ok(())
}

/// The EOS id the tokenizer names.
pub fn eos_id(tok: &LlamaTokenizer, model: &str) -> anyhow::Result<u32> {
    tok.eos_token
        .as_deref()
        .and_then(|t| tok.token_to_id(t))
        .with_context(|| format!("{model} has no EOS token"))
}

/// Reads, tokenizes and splits every file of `data`.
pub fn prepare(
    data: &DataConfig,
    tok: &LlamaTokenizer,
    eos_id: u32,
    seed: u64,
) -> anyhow::Result<Prepared> {
    data.validate()?;
    let task = data.task()?;
    let config = TokenizeConfig {
        max_prompt_length: data.max_prompt_length,
        max_length: data.max_length,
        eos_id,
    };
    // The cache key includes the whole tokenizer; serialise it once for all files.
    let tokenizer_json = tok
        .inner
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let rule = match data.split {
        SplitKind::FileOrder => SplitRule::FileOrder {
            eval_fraction: data.eval_fraction,
        },
        SplitKind::Shuffle => SplitRule::Shuffled {
            eval_fraction: data.eval_fraction,
            seed,
        },
    };
    let mut out = String::new();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let mut example = None;
    for (path, is_eval) in data
        .files
        .iter()
        .map(|p| (p, false))
        .chain(data.eval_files.iter().map(|p| (p, true)))
    {
        let f = prepare_file(data, &task, tok, &tokenizer_json, &config, path)?;
        let pairs_in = f.pairs.len() + f.report.dropped.values().sum::<usize>();
        print_file(&mut out, &f, pairs_in)?;
        example = example.or_else(|| f.pairs.first().cloned());
        if is_eval {
            eval.extend(f.pairs);
        } else if data.eval_files.is_empty() {
            let (t, e) = split(f.pairs, rule);
            train.extend(t);
            eval.extend(e);
        } else {
            train.extend(f.pairs);
        }
    }
    writeln!(
        out,
        "train pairs {}, eval pairs {}",
        train.len(),
        eval.len()
    )?;
    let all: Vec<TokenizedPair> = train.iter().chain(&eval).cloned().collect();
    if let Some(stats) = LengthStats::of(&all) {
        for (name, p) in [
            ("prompt", stats.prompt),
            ("chosen", stats.chosen),
            ("rejected", stats.rejected),
            ("prompt+chosen", stats.prompt_plus_chosen),
        ] {
            writeln!(
                out,
                "  tokens {name:14} p50 {:6.1}  p90 {:6.1}  p99 {:6.1}  max {:4}",
                p.p50, p.p90, p.p99, p.max
            )?;
        }
    }
    if let Some(t) = example {
        writeln!(out, "example ({}), prompt ⟦ completion ⟧:", t.source)?;
        let prompt = tok.decode(&t.prompt_ids, false)?;
        writeln!(
            out,
            "  chosen:   {prompt}⟦{}⟧",
            tok.decode(&t.chosen_ids, false)?
        )?;
        writeln!(
            out,
            "  rejected: {prompt}⟦{}⟧",
            tok.decode(&t.rejected_ids, false)?
        )?;
    }
    Ok(Prepared {
        train,
        eval,
        summary: out,
    })
}

/// A model path as the binaries take it: a GGUF file, a Hugging Face directory, or a `train` run
/// directory, which stands for the model it exported (`<run>/model`).
#[allow(dead_code)] // not used by `train` itself
pub fn resolve_model(path: &Path) -> PathBuf {
    let exported = path.join("model");
    if path.join("summary.json").is_file() && exported.is_dir() {
        exported
    } else {
        path.to_path_buf()
    }
}
