//! `evaluate`: a policy against a reference on held-out preference pairs (per-pair completion
//! log-probs, rewards, loss and regularizer value; reward accuracy, mean margin, mean loss), and
//! optionally generation judged by a local model (% YES, every response saved as JSONL).
//!
//! cargo run --release --bin evaluate -- --policy runs/decpo \
//!     --reference models/SmolLM2-135M-Instruct.Q4_1.gguf --task cognitive-reframing \
//!     --files ../shared/data/cognitive-reframing/reframing_dataset.csv --json
//!
//! Models are GGUF files, Hugging Face directories or `train` run directories. A run directory
//! as `--policy` also gives the data: its `config.toml` says which files, task, lengths, split
//! and seed, so the held-out pairs are the ones it held out (checked against its `heldout.txt`);
//! data flags override it. Without `--reference` the policy is its own reference. Log-probs are summed over the completion
//! tokens, the appended EOS included.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use decpo::evaluate::{Evaluation, generation_request};
use decpo::run::cli::{ConfigArgs, DataArgs, RegularizerArgs, config_name, config_of_models};
use decpo_alignment::LossType;
use decpo_model::SamplingConfig;

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
    /// Regularizer whose value is reported per pair: paper, released, l1 or none (default: the
    /// run's, else paper).
    #[arg(long)]
    regularizer: Option<String>,
    #[command(flatten)]
    regularizer_fields: RegularizerArgs,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !matches!(args.pairs.as_str(), "eval" | "all") {
        bail!("--pairs: `eval` or `all`, got `{}`", args.pairs);
    }
    let run = config_of_models(std::slice::from_ref(&args.policy), &args.config, &args.data)?;
    if args.config.printed(&run)? {
        return Ok(());
    }
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_p: 1.0,
        seed: args.sampling_seed,
    };
    let generation = match &args.judge {
        Some(judge) => Some((
            judge.clone(),
            generation_request(
                &run.data.task,
                args.generate,
                args.max_new_tokens,
                sampling,
                args.generations.clone(),
            )?,
        )),
        None => None,
    };
    let evaluated = Evaluation {
        policy: args.policy,
        reference: args.reference,
        all_pairs: args.pairs == "all",
        n: args.n,
        loss: args.loss,
        beta: args.beta,
        regularizer: args.regularizer,
        regularizer_fields: args.regularizer_fields,
        generation,
    }
    .run(&run)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluated.to_json()?)?);
    } else {
        print!("{}", evaluated.describe());
    }
    Ok(())
}
