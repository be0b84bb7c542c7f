//! Command-line sections shared by the binaries, each the flags of one part of [`RunConfig`]
//! named as its fields are (kebab-case): a flag given overrides the configuration's field, a flag
//! left out keeps it. Fields of `[data]`, `[train]` and `[objective]` are flags by their own
//! name (`--files`, `--learning-rate`, `--beta`); fields of the optional tables carry the
//! table's name (`--lora-rank`, `--sft-steps`, `--regularizer-lambda`, `--regularizer-site`).
//! A few older spellings stay as hidden aliases (`--data`, `--eval-data`, `--lambda`,
//! `--dec-layer`) so recorded commands still run.

use std::path::PathBuf;

use decpo_alignment::train::session::{ReferenceMode, TrainSettings};
use decpo_alignment::{LossType, RegRows, Regularizer, Site};
use decpo_datasets::Template;

use super::config::{DataConfig, RunConfig, SftPhase, SplitKind};

/// The `[data]` flags (and the split seed, `[train] seed`): `train`, `evaluate` and `analyze`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Data adapter: trl, hh-rlhf, cognitive-reframing, sycophancy-caa, sycophancy-caa-full-text,
    /// sycophancy-anthropic, toxicity-pairs.
    #[arg(long)]
    pub task: Option<String>,
    /// How text pairs are laid out: auto (chat when the model has a chat template, else raw),
    /// chat (prompt as the user turn, completion as the assistant's), plain (a line break between
    /// prompt and completion where neither has whitespace), raw (joined as in the file).
    #[arg(long, value_enum)]
    pub template: Option<Template>,
    /// Preference files (JSONL, JSON, CSV, Parquet, optionally gzipped); each is split on its own.
    #[arg(long, num_args = 1.., alias = "data")]
    pub files: Vec<PathBuf>,
    /// Evaluation files; when given, all of --files trains.
    #[arg(long, num_args = 1.., alias = "eval-data")]
    pub eval_files: Vec<PathBuf>,
    #[arg(long)]
    pub prompt_column: Option<String>,
    #[arg(long)]
    pub chosen_column: Option<String>,
    #[arg(long)]
    pub rejected_column: Option<String>,
    /// Skip and count invalid rows instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    #[arg(long)]
    pub max_length: Option<usize>,
    /// file-order (the authors' first 90 % / last 10 % of each file), shuffle (seeded), or
    /// by-prompt (seeded; pairs sharing a prompt stay on one side).
    #[arg(long, value_enum)]
    pub split: Option<SplitKind>,
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The run's seed: weights, data order, and the `shuffle` split.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl DataArgs {
    /// Sets the fields of `c` that a flag names.
    pub fn apply(&self, c: &mut RunConfig) {
        let d: &mut DataConfig = &mut c.data;
        let set = |dst: &mut String, src: &Option<String>| {
            if let Some(v) = src {
                dst.clone_from(v);
            }
        };
        set(&mut d.task, &self.task);
        d.template = self.template.unwrap_or(d.template);
        set(&mut d.prompt_column, &self.prompt_column);
        set(&mut d.chosen_column, &self.chosen_column);
        set(&mut d.rejected_column, &self.rejected_column);
        if !self.files.is_empty() {
            d.files.clone_from(&self.files);
        }
        if !self.eval_files.is_empty() {
            d.eval_files.clone_from(&self.eval_files);
        }
        d.skip_invalid |= self.skip_invalid;
        d.max_prompt_length = self.max_prompt_length.unwrap_or(d.max_prompt_length);
        d.max_length = self.max_length.unwrap_or(d.max_length);
        d.split = self.split.unwrap_or(d.split);
        d.eval_fraction = self.eval_fraction.unwrap_or(d.eval_fraction);
        if self.cache_dir.is_some() {
            d.cache_dir.clone_from(&self.cache_dir);
        }
        c.train.seed = self.seed.unwrap_or(c.train.seed);
    }
}

/// The configuration a command on `models` runs with: `--config`'s, else the first model that is a
/// `train` run directory's own (`config.toml`: its data, split and seed), else the defaults;
/// then the data flags on top.
pub fn config_of_models(
    models: &[PathBuf],
    file: &ConfigArgs,
    flags: &DataArgs,
) -> anyhow::Result<RunConfig> {
    let run = match file.read()? {
        Some(c) => Some(c),
        None => models
            .iter()
            .find_map(|m| RunConfig::of_run(m).transpose())
            .transpose()?,
    };
    let mut c = run.unwrap_or_default();
    flags.apply(&mut c);
    Ok(c)
}

/// The `[train]` flags shared by `train` and `experiment`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps at most (the same budget for every method of an experiment).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Pairs per micro-batch.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub accumulation: Option<usize>,
    /// Optimizer steps between evaluations and checkpoints.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// precomputed, frozen or lora-off.
    #[arg(long, value_parser = config_name::<ReferenceMode>)]
    pub reference: Option<ReferenceMode>,
}

/// A flag's value read by the name the configuration file uses for it (`sigmoid`, `lora-off`,
/// ...); serde's error lists the names it knows.
pub fn config_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

impl TrainArgs {
    /// Sets the fields of `c.train` that a flag names.
    pub fn apply(&self, c: &mut RunConfig) {
        let t: &mut TrainSettings = &mut c.train;
        t.learning_rate = self.learning_rate.unwrap_or(t.learning_rate);
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.max_steps = self.max_steps.or(t.max_steps);
        t.micro_batch = self.micro_batch.unwrap_or(t.micro_batch);
        t.accumulation = self.accumulation.unwrap_or(t.accumulation);
        t.save_every = self.save_every.unwrap_or(t.save_every);
        t.reference = self.reference.unwrap_or(t.reference);
    }
}

/// The `[distributed]` flags of `train`: this process as one node of several.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// Nodes training together (processes, usually one per machine); every node is started
    /// with the same model, data, settings and --out, and its own --rank.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// This node's place, 0..nodes (node 0 sums the gradients and writes the run's files).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Node 0's address, HOST:PORT: node 0 listens there, the others connect to it.
    #[arg(long)]
    pub main_address: Option<String>,
    /// Seconds to wait for the other nodes before stopping with an error.
    #[arg(long)]
    pub node_timeout: Option<f64>,
}

impl NodeArgs {
    /// Sets the fields of `c.distributed` that a flag names.
    pub fn apply(&self, c: &mut RunConfig) {
        let d = &mut c.distributed;
        d.nodes = self.nodes.unwrap_or(d.nodes);
        d.rank = self.rank.unwrap_or(d.rank);
        if let Some(a) = &self.main_address {
            d.main_address.clone_from(a);
        }
        d.node_timeout = self.node_timeout.unwrap_or(d.node_timeout);
    }
}

/// The `[objective]`, `[lora]` and `[sft]` flags of `train`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MethodArgs {
    /// sigmoid, ipo, hinge, simpo, sft.
    #[arg(long, value_parser = config_name::<LossType>)]
    pub loss: Option<LossType>,
    #[arg(long)]
    pub beta: Option<f64>,
    /// The regularizer's mode: paper, released, l1 or none.
    #[arg(long)]
    pub regularizer: Option<String>,
    #[command(flatten)]
    pub regularizer_fields: RegularizerArgs,
    /// Full fine-tuning instead of LoRA.
    #[arg(long)]
    pub no_lora: bool,
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// Steps of SFT before preference optimisation (0 = none).
    #[arg(long)]
    pub sft_steps: Option<usize>,
}

impl MethodArgs {
    /// Sets what the flags name, except the regularizer (see [`MethodArgs::apply_regularizer`]).
    pub fn apply(&self, c: &mut RunConfig) {
        c.objective.loss = self.loss.unwrap_or(c.objective.loss);
        c.objective.beta = self.beta.unwrap_or(c.objective.beta);
        if self.no_lora {
            c.lora = None;
        }
        if let (Some(r), Some(l)) = (self.lora_rank, &mut c.lora) {
            l.rank = r;
        }
        if let Some(steps) = self.sft_steps {
            c.sft = match (steps, c.sft.take()) {
                (0, _) => None,
                (steps, Some(s)) => Some(SftPhase { steps, ..s }),
                (steps, None) => Some(SftPhase {
                    steps,
                    learning_rate: 1e-4,
                }),
            };
        }
    }

    /// Sets the regularizer once the model's depth is known (the default layer is ⌊n/3⌋). Without
    /// a configuration file, DPO's sigmoid loss gets DecPO's regularizer: DecPO is the default.
    pub fn apply_regularizer(
        &self,
        c: &mut RunConfig,
        n_layers: usize,
        from_file: bool,
    ) -> anyhow::Result<()> {
        let o = &mut c.objective;
        if let Some(mode) = &self.regularizer {
            o.regularizer = Regularizer::named(mode, n_layers / 3)
                .map_err(|e| anyhow::anyhow!("--regularizer: {e}"))?;
        } else if !from_file && o.regularizer.is_none() && o.loss == LossType::Sigmoid {
            o.regularizer = Some(Regularizer::paper(n_layers));
        }
        if let Some(reg) = &mut o.regularizer {
            self.regularizer_fields.apply(reg);
        }
        Ok(())
    }
}

/// The `[objective.regularizer]` fields but its mode: `train`, `evaluate` and `experiment`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegularizerArgs {
    /// The regularizer's weight λ (λ₁ for l1).
    #[arg(long = "regularizer-lambda", alias = "lambda")]
    pub lambda: Option<f64>,
    /// Set λ from the gradients instead: on the first step's pairs, so that the regularizer's
    /// gradient norm is this many times the preference term's (the λ found is logged and saved
    /// in the run's config.toml).
    #[arg(long = "regularizer-lambda-ratio", alias = "lambda-ratio")]
    pub lambda_ratio: Option<f64>,
    /// The decoder block whose up_proj output is regularized (0-based; default ⌊layers/3⌋).
    #[arg(long = "regularizer-layer", alias = "dec-layer")]
    pub layer: Option<usize>,
    /// Where in each sequence: prompt-last, completion-mean, completion-last or eos.
    #[arg(long = "regularizer-site", value_parser = config_name::<Site>)]
    pub site: Option<Site>,
    /// Which sequences give rows: all or chosen.
    #[arg(long = "regularizer-rows", value_parser = config_name::<RegRows>)]
    pub rows: Option<RegRows>,
}

impl RegularizerArgs {
    /// Sets the fields of `reg` that a flag names.
    pub fn apply(&self, reg: &mut Regularizer) {
        reg.lambda = self.lambda.unwrap_or(reg.lambda);
        if self.lambda_ratio.is_some() {
            reg.lambda_ratio = self.lambda_ratio;
        }
        reg.layer = self.layer.unwrap_or(reg.layer);
        reg.site = self.site.unwrap_or(reg.site);
        reg.rows = self.rows.unwrap_or(reg.rows);
    }
}

/// `--config` and `--print-config`, the same in every binary that runs from a configuration.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration (as `train --print-config` writes it, or a run's config.toml); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// The configuration file's, if one is given.
    pub fn read(&self) -> anyhow::Result<Option<RunConfig>> {
        self.config.as_deref().map(RunConfig::read).transpose()
    }

    /// With `--print-config`, prints `c` as TOML and returns true: the caller then stops.
    pub fn printed(&self, c: &RunConfig) -> anyhow::Result<bool> {
        if self.print_config {
            print!("{}", toml::to_string(c)?);
        }
        Ok(self.print_config)
    }
}
