//! `experiment`: the paper's comparison in one command. Trains SFT, DPO, SimPO, L1-Reg and DecPO
//! from the same base model on the same data, seeds and budget, evaluates each on the held-out
//! pairs (reward accuracy and margin against the base model) and by generation with a local
//! judge, measures FD/AV per layer, and writes one report (Markdown, plots, JSON).
//!
//! cargo run --release --bin experiment -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --task cognitive-reframing --files ../shared/data/cognitive-reframing/reframing_dataset.csv \
//!     --max-steps 60 --out reports/smollm2-reframing

use std::path::PathBuf;

use clap::Parser;

use decpo::experiment::methods::parse_methods;
use decpo::experiment::report;
use decpo::experiment::run::{Experiment, Sweep};
use decpo::run::cli::{ConfigArgs, DataArgs, RegularizerArgs, TrainArgs};
use decpo::run::{RunConfig, embedded};

#[derive(Parser, Debug)]
#[command(about = "SFT, DPO, SimPO, L1-Reg and DecPO from one base model, evaluated side by side")]
struct Args {
    /// Base model: GGUF file or Hugging Face directory (absent: the embedded small Llama).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Report directory.
    #[arg(long, default_value = "reports/experiment")]
    out: PathBuf,
    /// Methods, comma-separated, from: sft, dpo, simpo, l1, decpo.
    #[arg(long, default_value = "sft,dpo,simpo,l1,decpo")]
    methods: String,
    /// Seeds, comma-separated; every method runs once per seed.
    #[arg(long, default_value = "42")]
    seeds: String,
    #[command(flatten)]
    train: TrainArgs,
    #[arg(long)]
    beta: Option<f64>,
    /// DecPO's regularizer (paper mode); L1-Reg reads the same layer, site and rows.
    #[command(flatten)]
    regularizer: RegularizerArgs,
    /// L1-Reg's λ₁.
    #[arg(long)]
    l1_lambda: Option<f64>,
    /// Use only the first N training pairs (file order), for a smaller budget.
    #[arg(long)]
    train_pairs: Option<usize>,
    /// Full fine-tuning instead of the authors' LoRA.
    #[arg(long)]
    no_lora: bool,
    /// Judge model for the generation eval (default: the base model).
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Held-out prompts generated from and judged (0: no generation eval).
    #[arg(long, default_value_t = 20)]
    gen_prompts: usize,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature of the generation eval (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Dose-response sweep: DecPO once per gradient ratio (comma-separated; λ set on each run's
    /// first step so that ‖∇λL_dec‖ = ratio·‖∇L_pref‖) instead of once.
    #[arg(long)]
    regularizer_lambda_ratios: Option<String>,
    /// With the sweep: the layers to regularize, comma-separated (default: --regularizer-layer's).
    #[arg(long)]
    regularizer_layers: Option<String>,
    /// Only rewrite the report of `--out` from its results.json (no training).
    #[arg(long)]
    report_only: bool,
}

fn list<T: std::str::FromStr>(flag: &str, s: &str) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--{flag}: cannot read `{x}`"))
        })
        .collect()
}

/// The sweep of `--regularizer-lambda-ratios` and `--regularizer-layers`, if asked for.
fn sweep(args: &Args) -> anyhow::Result<Option<Sweep>> {
    let layers = match &args.regularizer_layers {
        Some(l) => list("regularizer-layers", l)?,
        None => Vec::new(),
    };
    match &args.regularizer_lambda_ratios {
        Some(r) => Ok(Some(Sweep {
            lambda_ratios: list("regularizer-lambda-ratios", r)?,
            layers,
        })),
        None if !layers.is_empty() => {
            anyhow::bail!("--regularizer-layers sweeps with --regularizer-lambda-ratios")
        }
        None => Ok(None),
    }
}

/// The shared configuration of every run, before the method is applied.
fn base_config(args: &Args) -> anyhow::Result<RunConfig> {
    let mut c = match (args.config.read()?, &args.model) {
        (Some(c), _) => c,
        (None, None) => embedded::config(),
        (None, Some(_)) => RunConfig::authors(),
    };
    if args.model.is_some() {
        c.model = args.model.clone();
    }
    if args.no_lora {
        c.lora = None;
    }
    args.data.apply(&mut c);
    args.train.apply(&mut c);
    c.objective.beta = args.beta.unwrap_or(c.objective.beta);
    // Every method starts from the same weights: no SFT phase inside the runs.
    c.sft = None;
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let methods = parse_methods(&args.methods)?;
    let seeds: Vec<u64> = list("seeds", &args.seeds)?;
    let files = if args.report_only {
        report::rewrite(&args.out)?
    } else {
        let config = base_config(&args)?;
        let sweep = sweep(&args)?;
        if args.config.printed(&config)? {
            return Ok(());
        }
        Experiment {
            out: args.out,
            methods,
            seeds,
            config,
            regularizer: args.regularizer,
            l1_lambda: args.l1_lambda,
            train_pairs: args.train_pairs,
            gen_prompts: args.gen_prompts,
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            judge: args.judge,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            sweep,
            judge_check: None,
        }
        .run()?
    };
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
