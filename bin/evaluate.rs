//! `evaluate`: a policy against a reference on held-out preference pairs (per-pair completion
//! log-probs, rewards, loss and regularizer value; reward accuracy, mean margin, mean loss), and
//! optionally generation judged by a local model (% YES, every response saved as JSONL).
//!
//! cargo run --release --bin evaluate -- --policy runs/decpo \
//!     --reference models/SmolLM2-135M-Instruct.Q4_1.gguf --task cognitive-reframing \
//!     --data ../shared/data/cognitive-reframing/reframing_dataset.csv --json
//!
//! Models are GGUF files, Hugging Face directories or `train` run directories. A run directory
//! as `--policy` also gives the data: its `config.toml` says which files, task, lengths, split
//! and seed, so the held-out pairs are the ones it held out (checked against its `heldout.txt`);
//! data flags override it. Without `--reference` the policy is its own reference. Log-probs are summed over the completion
//! tokens, the appended EOS included.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use decpo::experiment::eval::{GenerationResult, JudgedGeneration, judge_generations};
use decpo::run::RunConfig;
use decpo_alignment::evaluate::{evaluate_pairs, summarize};
use decpo_alignment::judge::{Judge, JudgeQuestion};
use decpo_alignment::{LossType, ObjectiveConfig, Regularizer};
use decpo_datasets::TokenizedPair;
use decpo_model::{Llama, LlamaTokenizer, SamplingConfig};

use decpo::backend::{Backend, device};
use decpo::run::cli::{ConfigArgs, DataArgs, config_name, config_of_models};
use decpo::run::data::{check_heldout, eos_id, load_model, load_with_tokenizer, prepare};

#[derive(Parser, Debug)]
#[command(about = "Held-out rewards of a policy against a reference, and judged generations")]
struct Args {
    /// The policy: GGUF file, Hugging Face directory or train run directory.
    #[arg(long)]
    policy: PathBuf,
    /// The reference (default: the policy itself).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Which data, and how it is split: a run directory's own (`config.toml`) unless a flag
    /// says otherwise; else these flags on the defaults.
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Which pairs: `eval` (the held-out part, as `train` splits it) or `all`.
    #[arg(long, default_value = "eval")]
    pairs: String,
    /// Most pairs evaluated.
    #[arg(long)]
    n: Option<usize>,
    /// β (default: the run's, else 0.1).
    #[arg(long)]
    beta: Option<f64>,
    /// sigmoid, ipo, hinge, simpo or sft.
    #[arg(long, default_value = "sigmoid", value_parser = config_name::<LossType>)]
    loss: LossType,
    /// Regularizer whose value is reported per pair: paper, released, l1 or none.
    #[arg(long, default_value = "paper")]
    regularizer: String,
    /// Its layer (default ⌊L/3⌋).
    #[arg(long)]
    dec_layer: Option<usize>,
    /// Judge model: turns on the generation eval.
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Prompts generated from and judged.
    #[arg(long, default_value_t = 50)]
    generate: usize,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampling (with --temperature above 0).
    #[arg(long, default_value_t = 0)]
    sampling_seed: u64,
    /// Where the (prompt, response, judge answer) lines go.
    #[arg(long, default_value = "generations.jsonl")]
    generations: PathBuf,
    /// Print `{"pairs": [...], "summary": {...}}` to stdout.
    #[arg(long)]
    json: bool,
}

/// The reference model (`--reference`), which must share the policy's token ids.
fn load_reference(args: &Args, policy: &Llama<Backend>) -> anyhow::Result<Option<Llama<Backend>>> {
    let Some(r) = &args.reference else {
        return Ok(None);
    };
    let (m, _, _) = load_model::<Backend>(r, &device())?;
    if m.config.vocab_size != policy.config.vocab_size {
        bail!(
            "{} has a vocabulary of {} tokens, the policy {}: they cannot share token ids",
            r.display(),
            m.config.vocab_size,
            policy.config.vocab_size
        );
    }
    Ok(Some(m))
}

/// The objective whose loss and regularizer value are reported per pair.
fn objective(args: &Args, run: &RunConfig, n_layers: usize) -> anyhow::Result<ObjectiveConfig> {
    let layer = args.dec_layer.unwrap_or(n_layers / 3);
    if layer >= n_layers {
        bail!("--dec-layer {layer}: the model has {n_layers} layers");
    }
    let regularizer = Regularizer::named(&args.regularizer, layer)
        .map_err(|e| anyhow::anyhow!("--regularizer: {e}"))?;
    Ok(ObjectiveConfig {
        loss: args.loss,
        beta: args.beta.unwrap_or(run.objective.beta),
        regularizer,
        ..ObjectiveConfig::default()
    })
}

/// The pairs evaluated: the held-out part as the run (or the flags) split it, or all.
fn pairs(args: &Args, run: &RunConfig, tok: &LlamaTokenizer) -> anyhow::Result<Vec<TokenizedPair>> {
    let eos = eos_id(tok, &args.policy.display().to_string())?;
    let prepared = prepare(&run.data, tok, eos, run.train.seed)?;
    eprint!("{}", prepared.summary);
    check_heldout(&args.policy, &run.data, run.train.seed, &prepared.eval)?;
    let mut pairs = if args.pairs == "all" {
        prepared.train.into_iter().chain(prepared.eval).collect()
    } else {
        prepared.eval
    };
    if let Some(n) = args.n {
        pairs.truncate(n);
    }
    if pairs.is_empty() {
        bail!(
            "no pairs to evaluate (--pairs {}, --n {:?})",
            args.pairs,
            args.n
        );
    }
    Ok(pairs)
}

/// Generates from the first `--generate` prompts and has the judge answer each (every line in
/// `--generations`).
fn judged(
    args: &Args,
    judge_path: &Path,
    task: &str,
    policy: &Llama<Backend>,
    tok: &LlamaTokenizer,
    pairs: &[TokenizedPair],
) -> anyhow::Result<GenerationResult> {
    let question = JudgeQuestion::for_task(task).with_context(|| {
        format!(
            "--judge: task `{task}` has no judge question (toxicity-pairs, hh-rlhf, \
             cognitive-reframing, sycophancy-*)"
        )
    })?;
    let (jm, jt, _) = load_with_tokenizer::<Backend>(judge_path, &device())?;
    let request = JudgedGeneration {
        question,
        prompts: args.generate,
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_p: 1.0,
            seed: args.sampling_seed,
        },
        file: args.generations.clone(),
    };
    let judge = Judge::new(&jm, &jt, &device())?;
    judge_generations(policy, tok, pairs, &judge, &request, &device(), |j| {
        eprintln!("[{}] {} (p_yes {:.3})", j.index, j.answer, j.p_yes)
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !matches!(args.pairs.as_str(), "eval" | "all") {
        bail!("--pairs: `eval` or `all`, got `{}`", args.pairs);
    }
    let (policy, tok, _) = load_with_tokenizer::<Backend>(&args.policy, &device())?;
    let reference = load_reference(&args, &policy)?;
    let run = config_of_models(std::slice::from_ref(&args.policy), &args.config, &args.data)?;
    if args.config.printed(&run)? {
        return Ok(());
    }
    let objective = objective(&args, &run, policy.config.num_hidden_layers)?;
    let pairs = pairs(&args, &run, &tok)?;
    let evals = evaluate_pairs(
        &policy,
        reference.as_ref(),
        &pairs,
        tok.pad_id(),
        &objective,
        64,
        &device(),
    );
    let summary = summarize(&evals);
    let generation = match &args.judge {
        Some(j) => Some(judged(&args, j, &run.data.task, &policy, &tok, &pairs)?),
        None => None,
    };

    if args.json {
        let mut v = serde_json::json!({ "pairs": evals, "summary": summary });
        if let Some(g) = &generation {
            v["generation"] = serde_json::to_value(g)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} held-out pairs, β {}, means:",
        summary.pairs, objective.beta
    );
    println!("  rewards/accuracies  {:.3}", summary.rewards_accuracies);
    println!("  rewards/margins     {:.4}", summary.rewards_margins);
    println!("  loss/preference     {:.4}", summary.loss_preference);
    if let Some(r) = summary.loss_regularizer {
        let layer = objective.regularizer.map_or(0, |g| g.layer());
        println!("  loss/regularizer    {r:.4} (layer {layer}, before λ)");
    }
    println!("  logps/chosen        {:.2}", summary.logps_chosen);
    println!("  logps/rejected      {:.2}", summary.logps_rejected);
    if let Some(g) = generation {
        println!(
            "judged YES: {:.1} % of {} responses (every line in {})",
            g.yes_rate * 100.0,
            g.prompts,
            g.file.display()
        );
    }
    Ok(())
}
