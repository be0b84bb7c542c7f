//! `experiment`: the paper's comparison in one command. Trains SFT, DPO, SimPO, L1-Reg and DecPO
//! from the same base model on the same data, seeds and budget, evaluates each on the held-out
//! pairs (reward accuracy and margin against the base model) and by generation with a local
//! judge, measures FD/AV per layer, and writes one report (Markdown, plots, JSON).
//!
//! cargo run --release --bin experiment -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --task cognitive-reframing --data ../shared/data/cognitive-reframing/reframing_dataset.csv \
//!     --max-steps 60 --out reports/smollm2-reframing

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use decpo::backend::{self, Autodiff, device};
use decpo::experiment::eval::{GenerationSettings, MethodResult, evaluate_method};
use decpo::experiment::methods::{MethodWeights, Shared, parse_methods, train_and_evaluate};
use decpo::experiment::report;
use decpo::run::cli::{ConfigArgs, DataArgs, TrainArgs};
use decpo::run::{RunConfig, embedded, job};

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
    /// DecPO's λ (paper mode).
    #[arg(long)]
    lambda: Option<f64>,
    /// L1-Reg's λ₁.
    #[arg(long)]
    l1_lambda: Option<f64>,
    /// The regularized layer of DecPO and L1-Reg (default ⌊L/3⌋).
    #[arg(long)]
    dec_layer: Option<usize>,
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

/// How every model's generations are judged.
fn generation_settings(args: &Args, task: &str) -> GenerationSettings {
    GenerationSettings {
        question: decpo_alignment::judge::JudgeQuestion::for_task(task),
        prompts: args.gen_prompts,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        judge: args.judge.clone(),
    }
}

/// What the report says about how the experiment ran.
#[allow(clippy::too_many_arguments)]
fn settings(
    args: &Args,
    shared: &RunConfig,
    data: &job::JobData,
    model: &str,
    layer: usize,
    n_layers: usize,
    seeds: Vec<u64>,
    started: Instant,
) -> anyhow::Result<report::Settings> {
    Ok(report::Settings {
        model: model.to_string(),
        task: shared.data.task.clone(),
        files: shared.data.files.clone(),
        train_pairs: data.train.pairs.len(),
        eval_pairs: data.eval.pairs.len(),
        layer,
        n_layers,
        seeds,
        config: toml::to_string(shared)?,
        decpo_lambda: args.lambda.unwrap_or(1e-4),
        l1_lambda: args.l1_lambda.unwrap_or(1e-4),
        gen_prompts: args.gen_prompts,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        judge: args.judge.as_ref().map_or_else(
            || format!("{model} (the base model)"),
            |j| j.display().to_string(),
        ),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        minutes: started.elapsed().as_secs_f64() / 60.0,
        backend: backend::name().into(),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let methods = parse_methods(&args.methods)?;
    let seeds: Vec<u64> = list("seeds", &args.seeds)?;
    if args.report_only {
        for f in report::rewrite(&args.out)? {
            println!("wrote {}", f.display());
        }
        return Ok(());
    }
    let device = device();
    let started = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;

    let mut shared = base_config(&args)?;
    if args.config.printed(&shared)? {
        return Ok(());
    }
    shared.out = args.out.join("runs/base");
    let loaded = job::load::<Autodiff>(&mut shared, &device)?;
    let n_layers = loaded.model.config.num_hidden_layers;
    let layer = args.dec_layer.unwrap_or(n_layers / 3);
    let mut data = job::data(&shared, &loaded.tok, &loaded.name)?;
    print!("{}", data.summary);
    if let Some(n) = args.train_pairs {
        data.train.pairs.truncate(n);
    }
    let generation_settings = generation_settings(&args, &shared.data.task);
    let base_model = burn::module::AutodiffModule::valid(&loaded.model);
    let mut results: Vec<MethodResult> = Vec::new();
    eprintln!("== base model: evaluating");
    results.push(evaluate_method(
        "base",
        0,
        &base_model,
        &base_model,
        &loaded.tok,
        &data.eval,
        &shared,
        layer,
        &generation_settings,
        None,
        &device,
    )?);
    let shared_run = Shared {
        out: &args.out,
        weights: MethodWeights {
            decpo_lambda: args.lambda,
            l1_lambda: args.l1_lambda,
        },
        config: &shared,
        loaded: &loaded,
        data: &data,
        base: &base_model,
        layer,
        generation: &generation_settings,
    };
    for &seed in &seeds {
        for method in &methods {
            results.push(train_and_evaluate(&shared_run, method, seed)?);
        }
    }
    let settings = settings(
        &args,
        &shared,
        &data,
        &loaded.name,
        layer,
        n_layers,
        seeds,
        started,
    )?;
    let files = report::write(&args.out, &settings, &results)?;
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
