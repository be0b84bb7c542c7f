//! `analyze`: monosemanticity measures (SPEC section 4) of one or more models on a task's prompts:
//! FD and AV per layer, the top tokens of each layer's most active MLP neuron, JSON and CSV
//! files, and plots (FD vs relative depth, AV difference vs relative depth, FD of the regularized
//! layer over a run's training steps).
//!
//! cargo run --release --bin analyze -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --model runs/decpo --task cognitive-reframing \
//!     --files ../shared/data/cognitive-reframing/reframing_dataset.csv --out analysis
//!
//! `--site` reads the rows where a regularizer can act (`prompt-last`, the default and the SPEC's
//! measurement; `completion-mean`, `completion-last`, `eos` over the held-out pairs); every table,
//! JSON and CSV says which.
//!
//! A `--model` is a GGUF file, a Hugging Face directory, or a `train` run directory (its exported
//! `model/`). Relative depth is l / (L − 1), so models of different depths share one axis.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use decpo::analysis::measures::{
    ModelAnalysis, analyze_model, fd_over_steps, parse_layers, write_outputs,
};
use decpo::backend;
use decpo::run::cli::{ConfigArgs, DataArgs, config_name, config_of_models};
use decpo_alignment::{RegRows, Site};

#[derive(Parser, Debug)]
#[command(about = "Per-layer FD / AV, top tokens and plots for one or more models")]
struct Args {
    /// Model: GGUF file, Hugging Face directory or train run directory (repeat for several).
    #[arg(long, required = true, num_args = 1)]
    model: Vec<PathBuf>,
    /// Names of the models in tables and legends (default: the file or directory name).
    #[arg(long, num_args = 1)]
    name: Vec<String>,
    /// Which data, and how it is split: the first `--model` that is a run directory gives its
    /// own (`config.toml`) and these flags override it; else the flags on the defaults.
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Most prompts measured (SPEC: 1000); at a completion site, most pairs.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Where in each sequence the rows are read, as the regularizer's sites: `prompt-last` (the
    /// SPEC's measurement: prompts alone, one row per distinct prompt), `completion-mean`,
    /// `completion-last` or `eos` (the held-out pairs, chosen and rejected).
    #[arg(long, default_value = "prompt-last", value_parser = config_name::<Site>)]
    site: Site,
    /// At a completion site, which sequences give rows: `all` or `chosen`.
    #[arg(long, default_value = "all", value_parser = config_name::<RegRows>)]
    rows: RegRows,
    /// Which prompts: `eval` (the held-out part, as `train` splits it) or `all`.
    #[arg(long, default_value = "eval")]
    prompts: String,
    /// Layers: `all` or a comma-separated list of 0-based indices.
    #[arg(long, default_value = "all")]
    layers: String,
    /// Top tokens listed per layer.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Training runs (train's --out directories) whose FD over steps is plotted.
    #[arg(long, num_args = 1)]
    run: Vec<PathBuf>,
    /// Output directory for JSON, CSV and plots.
    #[arg(long, default_value = "analysis")]
    out: PathBuf,
    /// Print `{"layers": [{"layer", "fd", "av"}, ...]}` (of the first model) to stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.name.is_empty() && args.name.len() != args.model.len() {
        bail!("give one --name per --model or none");
    }
    if !matches!(args.prompts.as_str(), "eval" | "all") {
        bail!("--prompts: `eval` or `all`, got `{}`", args.prompts);
    }
    let device = backend::device();
    // The prompts are tokenized and split as the run did, so that they are its held-out prompts.
    let c = config_of_models(&args.model, &args.config, &args.data)?;
    if args.config.printed(&c)? {
        return Ok(());
    }
    let mut analyses: Vec<ModelAnalysis> = Vec::new();
    for (i, path) in args.model.iter().enumerate() {
        let name = args.name.get(i).cloned();
        let a = analyze_model::<backend::Backend>(
            path,
            name,
            &c.data,
            c.train.seed,
            args.prompts == "all",
            args.n,
            (args.site, args.rows),
            |n| parse_layers(&args.layers, n),
            args.top_k,
            &device,
        )?;
        eprintln!(
            "{}: {} prompts, {} layers measured",
            a.model,
            a.prompts,
            a.layers.len()
        );
        analyses.push(a);
    }
    let runs = args
        .run
        .iter()
        .map(|r| fd_over_steps(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let files = write_outputs(&args.out, &analyses, &runs)?;
    for f in &files {
        eprintln!("wrote {}", f.display());
    }
    if args.json {
        let mut v = serde_json::json!({ "layers": analyses[0].layers });
        if analyses.len() > 1 {
            v["models"] = serde_json::to_value(&analyses)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for a in &analyses {
            print!("{}", a.describe());
        }
    }
    Ok(())
}
