//! `train`: DPO / DecPO training of a Llama model on preference pairs, on burn-train (dashboard
//! on a terminal, plain lines otherwise), with checkpoints, resume and a Hugging Face export.
//!
//! cargo run --release --bin train                      # the embedded default job (CPU, minutes)
//! cargo run --release --bin train -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --task hh-rlhf --data ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz --skip-invalid
//! cargo run --release --bin train -- --config run.toml --print-config
//! cargo run --release --features cuda --bin train -- --devices cuda:0,cuda:1 --accumulation 8

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use decpo_alignment::measure::LayerMeasure;
use decpo_alignment::train::run::describe;
use decpo_alignment::{LossType, Regularizer};
use decpo_model::Precision;

use decpo::backend::{self, Autodiff, device};
use decpo::run::cli::{DataArgs, TrainArgs};
use decpo::run::job::{self, Launch, Summary};
use decpo::run::{RunConfig, SftPhase, embedded};

#[derive(Parser, Debug)]
#[command(about = "DPO / DecPO training of a Llama model on preference pairs")]
struct Args {
    /// TOML configuration (see --print-config for every field); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Prepare and summarise the data, then exit.
    #[arg(long)]
    dry_run: bool,
    /// Continue from the newest complete checkpoint in the run directory.
    #[arg(long)]
    resume: bool,
    /// Run directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Model: GGUF file or Hugging Face directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// What the model computes in: f32, or bf16 (cuda, wgpu and flex builds).
    #[arg(long)]
    dtype: Option<Precision>,
    /// Devices to train on, data parallel, the first being the main one: cuda:0,cuda:1 (cuda);
    /// default, discrete:N, integrated:N, virtual:N, cpu (wgpu); cpu (ndarray, flex). Each
    /// optimizer step's micro-batches are shared out among them (--accumulation at least the
    /// number of devices keeps them all busy).
    #[arg(long)]
    devices: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// sigmoid, ipo, hinge, simpo, sft.
    #[arg(long)]
    loss: Option<String>,
    #[arg(long)]
    beta: Option<f64>,
    /// paper, released, l1 or none.
    #[arg(long)]
    regularizer: Option<String>,
    /// Regularizer weight λ.
    #[arg(long)]
    lambda: Option<f64>,
    /// Layer of the regularized up_proj (0-based).
    #[arg(long)]
    dec_layer: Option<usize>,
    /// Full fine-tuning instead of LoRA.
    #[arg(long)]
    no_lora: bool,
    #[arg(long)]
    lora_rank: Option<usize>,
    #[command(flatten)]
    train: TrainArgs,
    /// Steps of SFT before preference optimisation (0 = none).
    #[arg(long)]
    sft_steps: Option<usize>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(value.into()))
        .map_err(|_| anyhow::anyhow!("--{flag}: unknown value `{value}`"))
}

/// The configuration: embedded default job, or a file, or the authors' defaults; then flags.
fn config(args: &Args) -> anyhow::Result<RunConfig> {
    let mut c = match &args.config {
        Some(path) => RunConfig::read(path)?,
        None if args.model.is_none() && args.data.data.is_empty() => embedded::config(),
        None => RunConfig::authors(),
    };
    macro_rules! set {
        ($dst:expr, $src:expr) => {
            if let Some(v) = $src.clone() {
                $dst = v;
            }
        };
    }
    set!(c.out, args.out);
    if args.model.is_some() {
        c.model = args.model.clone();
    }
    set!(c.dtype, args.dtype);
    args.data.apply(&mut c);
    let o = &mut c.objective;
    if let Some(l) = &args.loss {
        o.loss = parse_enum("loss", l)?;
    }
    set!(o.beta, args.beta);
    args.train.apply(&mut c);
    if args.no_lora {
        c.lora = None;
    }
    if let (Some(r), Some(l)) = (args.lora_rank, &mut c.lora) {
        l.rank = r;
    }
    if let Some(steps) = args.sft_steps {
        c.sft = match (steps, c.sft.take()) {
            (0, _) => None,
            (steps, Some(s)) => Some(SftPhase { steps, ..s }),
            (steps, None) => Some(SftPhase {
                steps,
                learning_rate: 1e-4,
            }),
        };
    }
    Ok(c)
}

/// Applies the regularizer flags once the model's depth is known (the default layer is ⌊n/3⌋).
fn regularizer(args: &Args, c: &mut RunConfig, n_layers: usize) -> anyhow::Result<()> {
    let o = &mut c.objective;
    if let Some(kind) = &args.regularizer {
        o.regularizer = Regularizer::named(kind, n_layers / 3)
            .map_err(|e| anyhow::anyhow!("--regularizer: {e}"))?;
    } else if args.config.is_none() && o.regularizer.is_none() && o.loss == LossType::Sigmoid {
        // DecPO is the default method.
        o.regularizer = Some(Regularizer::paper(n_layers));
    }
    if let Some(reg) = &mut o.regularizer {
        if let Some(v) = args.dec_layer {
            reg.set_layer(v);
        }
        if let Some(v) = args.lambda {
            reg.set_lambda(v);
        }
    }
    Ok(())
}

fn run<B: AutodiffBackend>(
    args: &Args,
    mut c: RunConfig,
    devices: &[B::Device],
) -> anyhow::Result<()> {
    let loaded = job::load::<B>(&mut c, &devices[0])?;
    regularizer(args, &mut c, loaded.model.config.num_hidden_layers)?;
    if args.print_config {
        print!("{}", toml::to_string(&c)?);
        return Ok(());
    }
    c.objective
        .validate(loaded.model.config.num_hidden_layers)
        .map_err(anyhow::Error::msg)?;
    let data = job::data(&c, &loaded.tok, &loaded.name)?;
    let _ = std::io::stdout().lock().write_all(data.summary.as_bytes());
    if args.dry_run {
        return Ok(());
    }
    let dashboard = std::io::stdout().is_terminal();
    let launch = Launch {
        resume: args.resume,
        dashboard,
        devices,
    };
    let out = job::run::<B>(&c, loaded, data, &launch)?;
    print_summary(&out.summary, out.resumed_from, &c.out.join("summary.json"));
    Ok(())
}

fn print_summary(s: &Summary, resumed_from: Option<usize>, path: &Path) {
    println!("\n== DecPO run: {} ==", s.model);
    if let Some(k) = resumed_from {
        println!("resumed from checkpoint {k}");
    }
    println!("{} optimizer steps in {:.1} s", s.steps, s.seconds);
    println!(
        "held-out pairs ({}), against the reference:",
        s.eval_after.pairs
    );
    println!("  before: {}", describe(&s.eval_before));
    println!("  after:  {}", describe(&s.eval_after));
    let fmt = |v: &[LayerMeasure], f: fn(&LayerMeasure) -> f64| {
        v.iter()
            .map(|m| format!("{:.4}", f(m)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("FD per layer (held-out prompts, last token of up_proj):");
    println!("  before: {}", fmt(&s.layers_before, |m| m.fd));
    println!("  after:  {}", fmt(&s.layers_after, |m| m.fd));
    println!("AV per layer:");
    println!("  before: {}", fmt(&s.layers_before, |m| m.av));
    println!("  after:  {}", fmt(&s.layers_after, |m| m.av));
    println!("checkpoints: {}", s.checkpoints.display());
    println!(
        "exported model (Hugging Face, LoRA merged): {}",
        s.exported.display()
    );
    if let Some(a) = &s.adapters {
        println!("LoRA adapters (PEFT layout): {}", a.display());
    }
    println!("summary: {}", path.display());
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let c = config(&args)?;
    let devices = match &args.devices {
        Some(list) => backend::devices(list).context("--devices")?,
        None => vec![device()],
    };
    for (i, d) in devices.iter().enumerate() {
        // A device named twice (two workers on it) is set up once.
        if !devices[..i].contains(d) {
            backend::prepare::<Autodiff>(d, c.dtype)?;
        }
    }
    run::<Autodiff>(&args, c, &devices)
}
