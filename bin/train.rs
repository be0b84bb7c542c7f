//! `train`: DPO/DecPO training. This version prepares and inspects the data (`--dry-run`); the
//! training loop itself is not written yet.
//!
//! cargo run --release --bin train -- --task hh-rlhf \
//!     --data ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz --dry-run

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use decpo_datasets::cache;
use decpo_datasets::{
    ColumnMap, LengthStats, SplitRule, Task, TokenizeConfig, TokenizeReport, TokenizedPair,
    load_pairs, split, tokenize_pairs,
};
use decpo_model::{LlamaTokenizer, load_tokenizer};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SplitKind {
    /// The authors' rule: the first part of each file trains, the rest evaluates.
    FileOrder,
    /// A seeded shuffle of each file before the same cut.
    Shuffle,
}

#[derive(Parser, Debug)]
#[command(about = "DPO/DecPO training of a Llama model on preference pairs")]
struct Args {
    /// Data adapter: trl, hh-rlhf, cognitive-reframing, sycophancy-caa, sycophancy-caa-full-text,
    /// sycophancy-anthropic, toxicity-pairs.
    #[arg(long)]
    task: String,
    /// Preference files (JSONL, JSON, CSV, optionally gzipped); each is split on its own.
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Evaluation files; when given, all of --data trains.
    #[arg(long, num_args = 1..)]
    eval_data: Vec<PathBuf>,
    /// Model (GGUF file or Hugging Face directory); only its tokenizer is read for --dry-run.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Prompt column for --task trl.
    #[arg(long, default_value = "prompt")]
    prompt_column: String,
    /// Chosen column for --task trl.
    #[arg(long, default_value = "chosen")]
    chosen_column: String,
    /// Rejected column for --task trl.
    #[arg(long, default_value = "rejected")]
    rejected_column: String,
    /// Skip and count invalid rows instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
    /// Longest prompt kept (its end) when a pair is too long.
    #[arg(long, default_value_t = 128)]
    max_prompt_length: usize,
    /// Longest prompt + completion (completions keep their start).
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    #[arg(long, value_enum, default_value_t = SplitKind::FileOrder)]
    split: SplitKind,
    /// Fraction of each file held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where tokenized data is cached (default: ~/.cache/decpo).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Print the dataset summary and exit.
    #[arg(long)]
    dry_run: bool,
}

fn task(args: &Args) -> anyhow::Result<Task> {
    let mut task = Task::from_name(&args.task).with_context(|| {
        format!(
            "unknown --task `{}` (one of: {})",
            args.task,
            Task::NAMES.join(", ")
        )
    })?;
    if let Task::Trl(map) = &mut task {
        *map = ColumnMap {
            prompt: args.prompt_column.clone(),
            chosen: args.chosen_column.clone(),
            rejected: args.rejected_column.clone(),
        };
    }
    Ok(task)
}

fn cache_dir(args: &Args) -> PathBuf {
    args.cache_dir.clone().unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("decpo")
    })
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

fn prepare_file(
    args: &Args,
    task: &Task,
    tok: &LlamaTokenizer,
    tokenizer_json: &str,
    config: &TokenizeConfig,
    path: &Path,
) -> anyhow::Result<FileData> {
    let start = Instant::now();
    let loaded = load_pairs(path, task, args.skip_invalid)?;
    let settings = format!("{task:?} {config:?}");
    let cache_file = cache::cache_path(&cache_dir(args), path, tokenizer_json, &settings)?;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.eval_fraction) {
        bail!(
            "--eval-fraction must be in [0, 1), got {}",
            args.eval_fraction
        );
    }
    if args.max_prompt_length == 0 || args.max_length < 2 {
        bail!("--max-prompt-length must be >= 1 and --max-length >= 2");
    }
    let task = task(&args)?;
    let tok = load_tokenizer(&args.model)
        .with_context(|| format!("reading the tokenizer of {}", args.model.display()))?;
    let eos_id = tok
        .eos_token
        .as_deref()
        .and_then(|t| tok.token_to_id(t))
        .with_context(|| format!("{} has no EOS token", args.model.display()))?;
    let config = TokenizeConfig {
        max_prompt_length: args.max_prompt_length,
        max_length: args.max_length,
        eos_id,
    };
    // The cache key includes the whole tokenizer; serialise it once for all files.
    let tokenizer_json = tok
        .inner
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let rule = match args.split {
        SplitKind::FileOrder => SplitRule::FileOrder {
            eval_fraction: args.eval_fraction,
        },
        SplitKind::Shuffle => SplitRule::Shuffled {
            eval_fraction: args.eval_fraction,
            seed: args.seed,
        },
    };
    let mut out = String::new();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let mut example = None;
    for (path, is_eval) in args
        .data
        .iter()
        .map(|p| (p, false))
        .chain(args.eval_data.iter().map(|p| (p, true)))
    {
        let f = prepare_file(&args, &task, &tok, &tokenizer_json, &config, path)?;
        let pairs_in = f.pairs.len() + f.report.dropped.values().sum::<usize>();
        print_file(&mut out, &f, pairs_in)?;
        example = example.or_else(|| f.pairs.first().cloned());
        if is_eval {
            eval.extend(f.pairs);
        } else if args.eval_data.is_empty() {
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
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    if !args.dry_run {
        bail!("training is not implemented yet: only --dry-run works in this version");
    }
    Ok(())
}
