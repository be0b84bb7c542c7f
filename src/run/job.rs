//! One training job from its configuration: load the model, prepare the data, an optional SFT
//! phase, preference optimisation, held-out evaluation and per-layer FD/AV before and after, the
//! Hugging Face export and `summary.json`. Shared by `train` and `experiment`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use decpo_alignment::measure::{LayerMeasure, measure_layers};
use decpo_alignment::train::calibrate::Calibration;
use decpo_alignment::train::data::PairSet;
use decpo_alignment::train::run::{EvalPoint, ProbePoint, describe};
use decpo_alignment::train::session::{RunSpec, TrainSettings, evaluate, train};
use decpo_alignment::train::step::{StepSettings, StepValues};
use decpo_alignment::{LossType, ObjectiveConfig};
use decpo_datasets::{BatchIds, TokenizedPair};
use decpo_model::{Llama, LlamaTokenizer, load_pretrained, save_hf_dir, save_lora_adapters};
use serde::{Deserialize, Serialize};

use super::config::{DataConfig, RunConfig, SftPhase};
use super::data::{eos_id, prepare, write_heldout};
use super::embedded;

/// The model of a job with its tokenizer and a name for logs and cache keys.
pub struct Loaded<B: Backend> {
    pub model: Llama<B>,
    pub tok: LlamaTokenizer,
    pub name: String,
}

/// Loads `c.model`, or builds the embedded small Llama (and its data) when there is none.
pub fn load<B: Backend>(c: &mut RunConfig, device: &B::Device) -> anyhow::Result<Loaded<B>> {
    let loaded = match &c.model {
        Some(path) => {
            let p = load_pretrained::<B>(path, device)
                .with_context(|| format!("loading {}", path.display()))?;
            let tok = p
                .tokenizer
                .with_context(|| format!("{} has no tokenizer (tokenizer.json)", path.display()))?;
            Loaded {
                model: p.model,
                tok,
                name: path.display().to_string(),
            }
        }
        None => {
            let (model, tok) = embedded::model::<B>(&c.out, c.train.seed, device)?;
            Loaded {
                model,
                tok,
                name: "embedded sort-digits Llama".into(),
            }
        }
    };
    if c.model.is_none() && c.data.files.is_empty() {
        c.data.files = vec![embedded::data(&c.out)?];
    }
    Ok(loaded)
}

fn pair_set(pairs: Vec<TokenizedPair>, ids: BatchIds) -> PairSet {
    PairSet {
        pairs,
        ids,
        reference: None,
    }
}

/// Train and eval pairs of a job, and the printed data summary.
pub struct JobData {
    pub train: PairSet,
    pub eval: PairSet,
    pub summary: String,
}

/// Reads, checks, tokenizes (cached) and splits the job's data.
pub fn data(c: &RunConfig, tok: &LlamaTokenizer, model_name: &str) -> anyhow::Result<JobData> {
    let eos = eos_id(tok, model_name)?;
    let prepared = prepare(&c.data, tok, eos, c.train.seed)?;
    // A run trains on one side and measures on the other: neither may be empty.
    for (pairs, side, fix) in [
        (
            &prepared.train,
            "training",
            "more usable rows (see the invalid and dropped counts above) or a smaller data.eval_fraction",
        ),
        (
            &prepared.eval,
            "held-out",
            "data.eval_fraction > 0 (a run measures on held-out pairs) or data.eval_files",
        ),
    ] {
        if pairs.is_empty() {
            bail!(
                "{}no {side} pairs in {}: {} training and {} held-out pairs usable; needs {fix}",
                prepared.summary,
                files(&c.data),
                prepared.train.len(),
                prepared.eval.len(),
            );
        }
    }
    let ids = BatchIds {
        pad: tok.pad_id(),
        eos,
    };
    Ok(JobData {
        train: pair_set(prepared.train, ids),
        eval: pair_set(prepared.eval, ids),
        summary: prepared.summary,
    })
}

/// The data files of a run, for messages.
fn files(data: &DataConfig) -> String {
    let names: Vec<String> = data
        .files
        .iter()
        .chain(&data.eval_files)
        .map(|p| p.display().to_string())
        .collect();
    names.join(", ")
}

/// Most held-out prompts measured for FD/AV (SPEC section 4: N = 1000).
pub const MEASURE_PROMPTS: usize = 1000;

/// FD and AV of every layer over the first [`MEASURE_PROMPTS`] prompts of `set`.
pub fn layer_measures<B: Backend>(
    model: &Llama<B>,
    set: &PairSet,
    device: &B::Device,
) -> Vec<LayerMeasure> {
    let layers: Vec<usize> = (0..model.config.num_hidden_layers).collect();
    measure_layers(
        model,
        &set.prompts(MEASURE_PROMPTS),
        set.ids.pad,
        16,
        &layers,
        device,
    )
}

/// The file of a run directory that holds its [`Summary`].
pub const SUMMARY_FILE: &str = "summary.json";

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Summary {
    pub model: String,
    pub steps: usize,
    pub seconds: f64,
    pub eval_before: StepValues,
    pub eval_after: StepValues,
    /// FD/AV per layer on the held-out prompts, before and after preference optimisation.
    pub layers_before: Vec<LayerMeasure>,
    pub layers_after: Vec<LayerMeasure>,
    /// FD/AV per layer on the probe prompts during training (step 0 = before).
    pub probes: Vec<ProbePoint>,
    /// Held-out values at every evaluation during training.
    pub evals: Vec<EvalPoint>,
    pub checkpoints: PathBuf,
    pub exported: PathBuf,
    pub adapters: Option<PathBuf>,
    /// How λ was set when the regularizer asked for a gradient ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl Summary {
    /// What `train` prints at the end: held-out results and FD/AV per layer before and after,
    /// and where the run left its files (`out_dir`, the run directory).
    pub fn describe(&self, resumed_from: Option<usize>, out_dir: &Path) -> String {
        let mut out = String::new();
        self.write_description(&mut out, resumed_from, out_dir)
            .expect("writing to a String cannot fail");
        out
    }

    fn write_description(
        &self,
        out: &mut String,
        resumed_from: Option<usize>,
        out_dir: &Path,
    ) -> std::fmt::Result {
        writeln!(out, "\n== DecPO run: {} ==", self.model)?;
        if let Some(k) = resumed_from {
            writeln!(out, "resumed from checkpoint {k}")?;
        }
        writeln!(
            out,
            "{} optimizer steps in {:.1} s",
            self.steps, self.seconds
        )?;
        let n = self.eval_after.pairs;
        writeln!(out, "held-out pairs ({n}), against the reference:")?;
        writeln!(out, "  before: {}", describe(&self.eval_before))?;
        writeln!(out, "  after:  {}", describe(&self.eval_after))?;
        let fmt = |v: &[LayerMeasure], f: fn(&LayerMeasure) -> f64| {
            v.iter()
                .map(|m| format!("{:.4}", f(m)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            out,
            "FD per layer (held-out prompts, last token of up_proj):"
        )?;
        writeln!(out, "  before: {}", fmt(&self.layers_before, |m| m.fd))?;
        writeln!(out, "  after:  {}", fmt(&self.layers_after, |m| m.fd))?;
        writeln!(out, "AV per layer:")?;
        writeln!(out, "  before: {}", fmt(&self.layers_before, |m| m.av))?;
        writeln!(out, "  after:  {}", fmt(&self.layers_after, |m| m.av))?;
        writeln!(out, "checkpoints: {}", self.checkpoints.display())?;
        let exported = self.exported.display();
        writeln!(
            out,
            "exported model (Hugging Face, LoRA merged): {exported}"
        )?;
        if let Some(a) = &self.adapters {
            writeln!(out, "LoRA adapters (PEFT layout): {}", a.display())?;
        }
        writeln!(out, "summary: {}", out_dir.join(SUMMARY_FILE).display())
    }

    /// Writes `<out>/summary.json`.
    pub fn save(&self, out: &Path) -> anyhow::Result<()> {
        let path = out.join(SUMMARY_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Names the weights a preference phase starts from, in the reference cache's file names.
fn model_key(c: &RunConfig, model_name: &str) -> String {
    format!(
        "{model_name} {} sft={:?} seed={}",
        c.dtype,
        c.sft.as_ref().map(|s| s.steps),
        c.train.seed
    )
}

/// What a job leaves besides its files.
pub struct JobOutput<B: Backend> {
    pub summary: Summary,
    /// The policy before preference optimisation (after SFT, if any) and after (LoRA merged).
    pub initial: Llama<B>,
    pub trained: Llama<B>,
    pub resumed_from: Option<usize>,
}

/// How a job's training runs: resumed or not, with burn's dashboard or plain lines, and on which
/// devices (data parallel; the model is on the first).
pub struct Launch<'a, D> {
    pub resume: bool,
    pub dashboard: bool,
    pub devices: &'a [D],
}

/// Runs the job: optional SFT phase, preference optimisation, evaluation, export.
pub fn run<B: AutodiffBackend>(
    c: &RunConfig,
    loaded: Loaded<B>,
    data: JobData,
    launch: &Launch<B::Device>,
) -> anyhow::Result<JobOutput<B::InnerBackend>> {
    let Loaded {
        model,
        tok,
        name: model_name,
    } = loaded;
    let (train_set, eval_set) = (data.train, data.eval);
    c.distributed.validate()?;
    // Every node of a multi-node run has the same run directory; node 0 writes its files.
    let writes = c.distributed.writes_files();
    if writes {
        c.save()?;
        write_heldout(&c.out, &eval_set.pairs)?;
    }
    let policy = match &c.sft {
        Some(sft) => sft_phase(c, sft, model, &train_set, &eval_set, &model_name, launch)?,
        None => model,
    };

    // Preference optimisation, evaluated before and after against the policy it starts from.
    let initial = policy.valid();
    let inner_device = initial.embed_tokens.weight.device();
    let step_settings = StepSettings {
        objective: c.objective.clone(),
        logits_chunk: c.train.logits_chunk,
        max_grad_norm: None,
        split_grad_norm: false,
    };
    let held_out = |m: &Llama<B::InnerBackend>| {
        let values = evaluate(
            m,
            &initial,
            &eval_set,
            &step_settings,
            c.train.micro_batch,
            &inner_device,
        );
        (values, layer_measures(m, &eval_set, &inner_device))
    };
    let (mut eval_before, layers_before) = held_out(&initial);
    let dir = c.out.join("decpo");
    let key = model_key(c, &model_name);
    let spec = RunSpec {
        objective: &c.objective,
        train: &c.train,
        lora: c.lora.as_ref(),
        dir: &dir,
        resume: launch.resume,
        dashboard: launch.dashboard,
        model_key: &key,
        nodes: Some(&c.distributed),
    };
    let result = train(policy, train_set, eval_set.clone(), &spec, launch.devices)?;
    let trained = result.policy;
    let (mut eval_after, layers_after) = held_out(&trained);
    if let Some(calibration) = result.calibration {
        // λ was set by the first step's gradients: the run's configuration and its held-out
        // losses (evaluated with the λ given before it was known) say which.
        if writes {
            with_lambda(c, calibration.lambda).save()?;
        }
        for v in [&mut eval_before, &mut eval_after] {
            v.loss = v.loss_pref + calibration.lambda * v.loss_reg;
        }
    }

    let merged = trained.merge_lora();
    let (exported, adapters) = if writes {
        export(c, &trained, &merged, &tok, &model_name)?
    } else {
        (c.out.join("model"), None)
    };
    let summary = Summary {
        model: model_name,
        steps: result.report.steps_done,
        seconds: result.report.seconds,
        eval_before,
        eval_after,
        layers_before,
        layers_after,
        probes: result.report.probes.clone(),
        evals: result.report.evals.clone(),
        checkpoints: dir.join("checkpoint"),
        exported,
        adapters,
        calibration: result.calibration,
    };
    if writes {
        summary.save(&c.out)?;
    }
    Ok(JobOutput {
        summary,
        initial,
        trained: merged,
        resumed_from: result.resumed_from,
    })
}

/// `c` with the regularizer's λ set to `lambda`.
pub fn with_lambda(c: &RunConfig, lambda: f64) -> RunConfig {
    let mut c = c.clone();
    if let Some(reg) = &mut c.objective.regularizer {
        reg.lambda = lambda;
    }
    c
}

/// SFT on the chosen completions (full weights, or adapters merged after).
fn sft_phase<B: AutodiffBackend>(
    c: &RunConfig,
    sft: &SftPhase,
    policy: Llama<B>,
    train_set: &PairSet,
    eval_set: &PairSet,
    model_name: &str,
    launch: &Launch<B::Device>,
) -> anyhow::Result<Llama<B>> {
    let objective = ObjectiveConfig {
        loss: LossType::Sft,
        regularizer: None,
        ..c.objective.clone()
    };
    let settings = TrainSettings {
        learning_rate: sft.learning_rate,
        max_steps: Some(sft.steps),
        epochs: usize::MAX / 2,
        save_every: sft.steps,
        ..c.train.clone()
    };
    eprintln!("SFT: {} steps", sft.steps);
    let spec = RunSpec {
        objective: &objective,
        train: &settings,
        lora: c.lora.as_ref(),
        dir: &c.out.join("sft"),
        resume: launch.resume,
        dashboard: launch.dashboard,
        model_key: &format!("{model_name} {} sft", c.dtype),
        nodes: Some(&c.distributed),
    };
    let result = train(
        policy,
        train_set.clone(),
        eval_set.clone(),
        &spec,
        launch.devices,
    )?;
    Ok(Llama::from_inner(result.policy.merge_lora()))
}

/// Writes the trained model as a Hugging Face directory (`merged`: its adapters folded in) and,
/// with LoRA, the adapters of `trained` in PEFT's layout; returns both places.
fn export<B: Backend>(
    c: &RunConfig,
    trained: &Llama<B>,
    merged: &Llama<B>,
    tok: &LlamaTokenizer,
    model_name: &str,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let exported = c.out.join("model");
    save_hf_dir(merged, Some(tok), &exported)?;
    let adapters = match &c.lora {
        Some(l) => {
            let dir = c.out.join("adapters");
            save_lora_adapters(trained, l, model_name, &dir)?;
            Some(dir)
        }
        None => None,
    };
    Ok((exported, adapters))
}
