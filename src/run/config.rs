//! The configuration of a run: one tree (`[data]`, `[sft]`, `[objective]`, `[lora]`, `[train]`,
//! `[distributed]`)
//! with its defaults and validation, read from and saved as the run's `config.toml`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use decpo_alignment::ObjectiveConfig;
use decpo_alignment::train::nodes::NodeSettings;
use decpo_alignment::train::session::TrainSettings;
use decpo_datasets::{ColumnMap, Task, Template};
use decpo_model::weights::save::write_file_atomically;
use decpo_model::{LoraConfig, Precision};
use serde::{Deserialize, Serialize};

/// An SFT phase on the chosen completions before preference optimisation (so the reference of a
/// model that was never instruction-tuned is not random).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftPhase {
    pub steps: usize,
    pub learning_rate: f64,
}

/// The whole configuration of a run: a TOML file, then flags on top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// GGUF file or Hugging Face directory; absent = the embedded small Llama.
    pub model: Option<PathBuf>,
    /// Run directory: checkpoints, logs, the exported model.
    pub out: PathBuf,
    /// What the model computes in: `f32`, or `bf16` (CUDA, wgpu or flex backends; see
    /// `decpo_model::precision` for what stays f32).
    pub dtype: Precision,
    pub data: DataConfig,
    pub sft: Option<SftPhase>,
    pub objective: ObjectiveConfig,
    /// LoRA adapters; absent = full fine-tuning.
    pub lora: Option<LoraConfig>,
    pub train: TrainSettings,
    /// Several nodes training together (absent: this machine alone).
    #[serde(skip_serializing_if = "NodeSettings::is_single")]
    pub distributed: NodeSettings,
}

impl Default for RunConfig {
    /// What a configuration file leaves unsaid: full fine-tuning (no `[lora]`), no SFT phase,
    /// β 0.1, the `[train]` defaults. (A run on `--model` without `--config` adds the authors'
    /// LoRA.)
    fn default() -> Self {
        Self {
            model: None,
            out: PathBuf::from("runs/decpo"),
            dtype: Precision::F32,
            data: DataConfig::default(),
            sft: None,
            objective: ObjectiveConfig::default(),
            lora: None,
            train: TrainSettings::default(),
            distributed: NodeSettings::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// The authors' rule: the first part of each file trains, the rest evaluates.
    FileOrder,
    /// A seeded shuffle of each file before the same cut.
    Shuffle,
    /// Whole prompts held out (seeded): pairs that share a prompt are all on one side, so no
    /// held-out prompt was seen in training.
    ByPrompt,
}

/// The `[data]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Data adapter: trl, hh-rlhf, cognitive-reframing, sycophancy-caa, ...
    pub task: String,
    /// How text pairs are laid out: auto (chat when the model has a chat template, else raw),
    /// chat, plain or raw (see `decpo_datasets::template`).
    pub template: Template,
    /// Preference files; each is split on its own.
    pub files: Vec<PathBuf>,
    /// Evaluation files; when given, all of `files` trains.
    pub eval_files: Vec<PathBuf>,
    pub prompt_column: String,
    pub chosen_column: String,
    pub rejected_column: String,
    /// Skip and count invalid rows instead of stopping at the first.
    pub skip_invalid: bool,
    pub max_prompt_length: usize,
    pub max_length: usize,
    pub split: SplitKind,
    pub eval_fraction: f64,
    /// Where tokenized data is cached (default: ~/.cache/decpo).
    pub cache_dir: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            task: "trl".into(),
            template: Template::Auto,
            files: Vec::new(),
            eval_files: Vec::new(),
            prompt_column: "prompt".into(),
            chosen_column: "chosen".into(),
            rejected_column: "rejected".into(),
            skip_invalid: false,
            max_prompt_length: 128,
            max_length: 256,
            split: SplitKind::FileOrder,
            eval_fraction: 0.1,
            cache_dir: None,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.files.is_empty() {
            bail!("no data: give --files (or [data] files) and --task");
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            bail!(
                "eval_fraction must be in [0, 1), got {}",
                self.eval_fraction
            );
        }
        if self.max_prompt_length == 0 || self.max_length < 2 {
            bail!("max_prompt_length must be >= 1 and max_length >= 2");
        }
        Ok(())
    }

    /// Whether `other` reads and splits the same pairs (everything but where the cache is).
    pub fn same_pairs(&self, other: &DataConfig) -> bool {
        let key = |d: &DataConfig| DataConfig {
            cache_dir: None,
            ..d.clone()
        };
        key(self) == key(other)
    }

    pub(crate) fn task(&self) -> anyhow::Result<Task> {
        let mut task = Task::from_name(&self.task).with_context(|| {
            format!(
                "unknown task `{}` (one of: {})",
                self.task,
                Task::NAMES.join(", ")
            )
        })?;
        if let Task::Trl(map) = &mut task {
            *map = ColumnMap {
                prompt: self.prompt_column.clone(),
                chosen: self.chosen_column.clone(),
                rejected: self.rejected_column.clone(),
            };
        }
        Ok(task)
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("decpo")
        })
    }
}

impl RunConfig {
    /// The authors' setup (SPEC section 5) for a run on a model of one's own: LoRA r 8 / α 16 /
    /// dropout 0.05 on q, v, up; the other defaults as a configuration file leaves them.
    pub fn authors() -> Self {
        Self {
            lora: Some(LoraConfig::new()),
            ..Self::default()
        }
    }

    /// Reads a configuration file (TOML); fields it leaves out take their defaults.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// The configuration a run directory was trained with (its `config.toml`), if it is one.
    pub fn of_run(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(CONFIG_FILE);
        if !dir.is_dir() || !path.is_file() {
            return Ok(None);
        }
        Self::read(&path).map(Some)
    }

    /// Writes the configuration as `<out>/config.toml` (atomically: a crash leaves the old file
    /// or the new one).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = self.out.join(CONFIG_FILE);
        write_file_atomically(&path, toml::to_string(self)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The file of a run directory that holds its configuration.
pub const CONFIG_FILE: &str = "config.toml";

#[cfg(test)]
mod tests {
    use super::*;
    use decpo_alignment::{RegMode, RegRows, Regularizer, Site};

    #[test]
    fn a_configuration_written_before_sites_still_reads() {
        // The committed report's DecPO run: `kind = "paper"`, `position = "last"`.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/smollm2-reframing/runs");
        let decpo = RunConfig::read(&dir.join("decpo-s42").join(CONFIG_FILE)).unwrap();
        let reg = decpo.objective.regularizer.unwrap();
        assert_eq!(
            reg,
            Regularizer {
                lambda: reg.lambda,
                site: Site::Eos,
                ..Regularizer::new(RegMode::Paper, 10)
            }
        );
        assert_eq!((reg.site, reg.rows), (Site::Eos, RegRows::All));
        let l1 = RunConfig::read(&dir.join("l1-s42").join(CONFIG_FILE)).unwrap();
        assert_eq!(l1.objective.regularizer.unwrap().mode, RegMode::L1);
    }

    #[test]
    fn the_regularizer_round_trips_through_toml_by_its_field_names() {
        let mut c = RunConfig::default();
        c.objective.regularizer = Some(Regularizer {
            site: Site::PromptLast,
            rows: RegRows::Chosen,
            ..Regularizer::new(RegMode::L1, 3)
        });
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("mode = \"l1\""), "{text}");
        assert!(text.contains("site = \"prompt-last\""), "{text}");
        assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), c);
    }
}
