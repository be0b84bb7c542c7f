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

use anyhow::{Context, bail};
use clap::Parser;
use decpo_alignment::{LossType, ObjectiveConfig, Regularizer};

use decpo::backend::{self, Autodiff, Backend, device};
use decpo::experiment::eval::{GenerationSettings, MethodResult, evaluate_method};
use decpo::experiment::report;
use decpo::run::cli::{DataArgs, TrainArgs};
use decpo::run::job::Launch;
use decpo::run::{RunConfig, embedded, job};
use decpo_model::Llama;

/// The methods of the paper's Table 2.
const METHODS: [&str; 5] = ["sft", "dpo", "simpo", "l1", "decpo"];

#[derive(Parser, Debug)]
#[command(about = "SFT, DPO, SimPO, L1-Reg and DecPO from one base model, evaluated side by side")]
struct Args {
    /// Base model: GGUF file or Hugging Face directory (absent: the embedded small Llama).
    #[arg(long)]
    model: Option<PathBuf>,
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
fn base_config(args: &Args) -> RunConfig {
    let mut c = match &args.model {
        None => embedded::config(),
        Some(m) => RunConfig {
            model: Some(m.clone()),
            ..RunConfig::authors()
        },
    };
    if args.no_lora {
        c.lora = None;
    }
    args.data.apply(&mut c);
    args.train.apply(&mut c);
    c.objective.beta = args.beta.unwrap_or(c.objective.beta);
    // Every method starts from the same weights: no SFT phase inside the runs.
    c.sft = None;
    c
}

/// The objective of `method` on top of the shared one.
fn objective(method: &str, base: &ObjectiveConfig, args: &Args, layer: usize) -> ObjectiveConfig {
    let with = |loss, regularizer| ObjectiveConfig {
        loss,
        regularizer,
        ..base.clone()
    };
    // L1-Reg and DecPO: the SPEC's defaults at `layer`, with the weights given on the command line.
    let regularized = |kind: &str, lambda: Option<f64>| {
        let mut reg = Regularizer::named(kind, layer)
            .expect("a known regularizer")
            .expect("not none");
        if let Some(l) = lambda {
            reg.set_lambda(l);
        }
        with(LossType::Sigmoid, Some(reg))
    };
    match method {
        "sft" => with(LossType::Sft, None),
        "simpo" => with(LossType::Simpo, None),
        "l1" => regularized("l1", args.l1_lambda),
        "decpo" => regularized("paper", args.lambda),
        _ => with(LossType::Sigmoid, None),
    }
}

/// The methods of `--methods`, each one of [`METHODS`].
fn methods(args: &Args) -> anyhow::Result<Vec<String>> {
    let methods: Vec<String> = list("methods", &args.methods)?;
    if let Some(bad) = methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
        bail!(
            "--methods: unknown method `{bad}` (one of {})",
            METHODS.join(", ")
        );
    }
    Ok(methods)
}

/// What every method's run shares.
struct Shared<'a> {
    config: &'a RunConfig,
    loaded: &'a job::Loaded<Autodiff>,
    data: &'a job::JobData,
    base: &'a Llama<Backend>,
    layer: usize,
    generation: &'a GenerationSettings,
}

/// Trains `method` with `seed` from the base model and evaluates it against the base.
fn train_and_evaluate(
    sh: &Shared,
    args: &Args,
    method: &str,
    seed: u64,
) -> anyhow::Result<MethodResult> {
    let device = device();
    let mut c = sh.config.clone();
    c.out = args.out.join(format!("runs/{method}-s{seed}"));
    c.train.seed = seed;
    c.objective = objective(method, &sh.config.objective, args, sh.layer);
    eprintln!("== {method} (seed {seed}): training");
    let loaded = job::Loaded {
        model: sh.loaded.model.clone(),
        tok: sh.loaded.tok.clone(),
        name: sh.loaded.name.clone(),
    };
    let data = job::JobData {
        train: sh.data.train.clone(),
        eval: sh.data.eval.clone(),
        summary: String::new(),
    };
    let launch = Launch {
        resume: false,
        dashboard: false,
        devices: std::slice::from_ref(&device),
    };
    let out = job::run::<Autodiff>(&c, loaded, data, &launch)?;
    eprintln!("== {method} (seed {seed}): evaluating");
    evaluate_method(
        method,
        seed,
        &out.trained,
        sh.base,
        &sh.loaded.tok,
        &sh.data.eval,
        &c,
        sh.layer,
        sh.generation,
        Some(out.summary),
        &device,
    )
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
    let methods = methods(&args)?;
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

    let mut shared = base_config(&args);
    shared.out = args.out.join("runs/base");
    let loaded = job::load::<Autodiff>(&mut shared, &device)?;
    let n_layers = loaded.model.config.num_hidden_layers;
    let layer = args.dec_layer.unwrap_or(n_layers / 3);
    let mut data = job::data(&shared, &loaded.tok, &loaded.name)?;
    print!("{}", data.summary);
    if let Some(n) = args.train_pairs {
        data.train.pairs.truncate(n);
    }
    let generation_settings = GenerationSettings {
        question: decpo_alignment::judge::JudgeQuestion::for_task(&shared.data.task),
        prompts: args.gen_prompts,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        judge: args.judge.clone(),
    };
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
        config: &shared,
        loaded: &loaded,
        data: &data,
        base: &base_model,
        layer,
        generation: &generation_settings,
    };
    for &seed in &seeds {
        for method in &methods {
            results.push(train_and_evaluate(&shared_run, &args, method, seed)?);
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
