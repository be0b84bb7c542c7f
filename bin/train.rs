//! `train`: DPO / DecPO training of a Llama model on preference pairs, on burn-train (dashboard
//! on a terminal, plain lines otherwise), with checkpoints, resume and a Hugging Face export.
//!
//! cargo run --release --bin train                      # the embedded default job (CPU, minutes)
//! cargo run --release --bin train -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --task hh-rlhf --files ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz --skip-invalid
//! cargo run --release --bin train -- --config run.toml --print-config
//! cargo run --release --features cuda --bin train -- --devices cuda:0,cuda:1 --accumulation 8
//! scripts/multinode.sh 2 -- --max-steps 20            # 2 nodes on this machine (loopback)

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use decpo_model::Precision;

use decpo::backend::{self, Autodiff, device};
use decpo::run::cli::{ConfigArgs, DataArgs, MethodArgs, NodeArgs, TrainArgs};
use decpo::run::job::{self, Launch};
use decpo::run::{RunConfig, embedded};

#[derive(Parser, Debug)]
#[command(about = "DPO / DecPO training of a Llama model on preference pairs")]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
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
    #[command(flatten)]
    method: MethodArgs,
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    distributed: NodeArgs,
}

/// The configuration: embedded default job, or a file, or the authors' defaults; then flags.
fn config(args: &Args) -> anyhow::Result<RunConfig> {
    let mut c = match args.config.read()? {
        Some(c) => c,
        None if args.model.is_none() && args.data.files.is_empty() => embedded::config(),
        None => RunConfig::authors(),
    };
    if let Some(out) = &args.out {
        c.out.clone_from(out);
    }
    if args.model.is_some() {
        c.model.clone_from(&args.model);
    }
    c.dtype = args.dtype.unwrap_or(c.dtype);
    args.data.apply(&mut c);
    args.method.apply(&mut c);
    args.train.apply(&mut c);
    args.distributed.apply(&mut c);
    Ok(c)
}

fn run<B: AutodiffBackend>(
    args: &Args,
    mut c: RunConfig,
    devices: &[B::Device],
) -> anyhow::Result<()> {
    let loaded = job::load::<B>(&mut c, &devices[0])?;
    args.method.apply_regularizer(
        &mut c,
        loaded.model.config.num_hidden_layers,
        args.config.config.is_some(),
    )?;
    if args.config.printed(&c)? {
        return Ok(());
    }
    c.objective
        .validate(loaded.model.config.num_hidden_layers)?;
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
    print!("{}", out.summary.describe(out.resumed_from, &c.out));
    Ok(())
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
