//! Reading, checking, tokenizing (cached) and splitting the preference files of a run.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use decpo_datasets::cache;
use decpo_datasets::{
    LengthStats, SplitRule, Task, TokenizeConfig, TokenizeReport, TokenizedPair, load_pairs, split,
    tokenize_pairs,
};
use decpo_model::weights::save::write_file_atomically;
use decpo_model::{Llama, LlamaTokenizer, load_pretrained};
use indicatif::{ProgressBar, ProgressStyle};

use super::config::{DataConfig, RunConfig, SplitKind};
use super::job::SUMMARY_FILE;

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
        template: data.template.resolve(tok.chat_template.is_some()),
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
        SplitKind::ByPrompt => SplitRule::ByKey {
            eval_fraction: data.eval_fraction,
            seed,
        },
    };
    let mut out = format!("template {:?}\n", config.template).to_lowercase();
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
            let (t, e) = split(f.pairs, rule, |p| p.prompt_ids.clone());
            train.extend(t);
            eval.extend(e);
        } else {
            train.extend(f.pairs);
        }
    }
    writeln!(
        out,
        "train pairs {}, eval pairs {}; held-out prompts {} distinct, {} of them also in training",
        train.len(),
        eval.len(),
        distinct_prompts(&eval).len(),
        shared_prompts(&train, &eval)
    )?;
    write_lengths_and_example(&mut out, &train, &eval, example.as_ref(), tok)?;
    Ok(Prepared {
        train,
        eval,
        summary: out,
    })
}

fn distinct_prompts(pairs: &[TokenizedPair]) -> HashSet<&[u32]> {
    pairs.iter().map(|p| p.prompt_ids.as_slice()).collect()
}

/// How many distinct held-out prompts also have a pair in training.
fn shared_prompts(train: &[TokenizedPair], eval: &[TokenizedPair]) -> usize {
    let trained = distinct_prompts(train);
    distinct_prompts(eval)
        .into_iter()
        .filter(|p| trained.contains(p))
        .count()
}

/// Token-length percentiles of all pairs and one example pair, decoded, for the summary.
fn write_lengths_and_example(
    out: &mut String,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
    example: Option<&TokenizedPair>,
    tok: &LlamaTokenizer,
) -> anyhow::Result<()> {
    let all: Vec<TokenizedPair> = train.iter().chain(eval).cloned().collect();
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
    Ok(())
}

/// A model path as the binaries take it: a GGUF file, a Hugging Face directory, or a `train` run
/// directory, which stands for the model it exported (`<run>/model`).
pub fn resolve_model(path: &Path) -> PathBuf {
    let exported = path.join("model");
    if path.join(SUMMARY_FILE).is_file() && exported.is_dir() {
        exported
    } else {
        path.to_path_buf()
    }
}

/// Loads a model path as the binaries take it (see [`resolve_model`]): the model, its tokenizer
/// if it has one, and the path it was read from.
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> anyhow::Result<(Llama<B>, Option<LlamaTokenizer>, PathBuf)> {
    let resolved = resolve_model(path);
    let p = load_pretrained::<B>(&resolved, device)
        .with_context(|| format!("loading {}", resolved.display()))?;
    Ok((p.model, p.tokenizer, resolved))
}

/// As [`load_model`], for a model that must come with its tokenizer.
pub fn load_with_tokenizer<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> anyhow::Result<(Llama<B>, LlamaTokenizer, PathBuf)> {
    let (model, tok, resolved) = load_model(path, device)?;
    let tok = tok.with_context(|| format!("{} has no tokenizer", resolved.display()))?;
    Ok((model, tok, resolved))
}

/// The file of a run directory that lists the pairs it held out, one source (file and row) a line.
pub const HELDOUT_FILE: &str = "heldout.txt";

/// Writes the sources of `eval`, the held-out pairs of the run in `dir`.
pub fn write_heldout(dir: &Path, eval: &[TokenizedPair]) -> anyhow::Result<()> {
    let path = dir.join(HELDOUT_FILE);
    let text: String = eval.iter().map(|p| format!("{}\n", p.source)).collect();
    write_file_atomically(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Checks that `eval`, read and split by `data` and `seed`, are the pairs the run in `dir` held
/// out, when `dir` is a run that lists them and `data` and `seed` are its own: the same
/// configuration must give the same split, so a difference means the data files changed. Other
/// data or another seed (flags, another configuration file) choose other pairs on purpose.
pub fn check_heldout(
    dir: &Path,
    data: &DataConfig,
    seed: u64,
    eval: &[TokenizedPair],
) -> anyhow::Result<()> {
    let Some(own) = RunConfig::of_run(dir)? else {
        return Ok(());
    };
    if !own.data.same_pairs(data) || own.train.seed != seed {
        return Ok(());
    }
    let path = dir.join(HELDOUT_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let listed: Vec<&str> = text.lines().collect();
    let now: Vec<&str> = eval.iter().map(|p| p.source.as_str()).collect();
    if listed != now {
        let first = listed
            .iter()
            .zip(&now)
            .position(|(a, b)| a != b)
            .unwrap_or(listed.len().min(now.len()));
        anyhow::bail!(
            "{}: the run held out {} pairs, its configuration now gives {} (first difference at \
             pair {}: {:?} vs {:?}); have its data files changed?",
            path.display(),
            listed.len(),
            now.len(),
            first + 1,
            listed.get(first),
            now.get(first)
        );
    }
    Ok(())
}
