//! One training run end to end: adapters, reference, optimizer, schedule, burn-train's
//! `SupervisedTraining` with the DecPO loop, checkpoints and resume.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::AdamWConfig;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::logger::InMemoryMetricLogger;
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use decpo_model::{Llama, LoraConfig};
use serde::{Deserialize, Serialize};

use crate::config::ObjectiveConfig;
use crate::error::{AlignError, Result, io_err};
use crate::train::calibrate::{Calibration, set_lambda};
use crate::train::checkpoint::{AtomicRecorder, Checkpoints, KeepComplete, latest_checkpoint};
use crate::train::data::{PairSet, StepLoader, StepPlan, plan_eval, plan_steps};
use crate::train::metrics::ValueMetric;
use crate::train::nodes::{NodeSettings, Nodes, fingerprint};
use crate::train::reference::prepare_reference;
use crate::train::restore::{Adam, restore};
use crate::train::run::{DecpoStrategy, LoopReport, PlainRenderer, merge_values};
use crate::train::schedule::{Decay, WarmupSchedule};
use crate::train::step::{DecpoModel, StepSettings, StepValues};

/// Where the reference log-probs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferenceMode {
    /// One no-grad pass of the initial policy over all pairs before training, stored in the run
    /// directory; the reference never runs during training.
    Precomputed,
    /// A frozen copy of the initial policy (without adapters), run every step.
    Frozen,
    /// The policy with its LoRA adapters removed, run every step (no second copy of the weights).
    LoraOff,
}

/// Optimisation settings of a run (the `[train]` table of the TOML configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
    pub epochs: usize,
    /// Stop after this many optimizer steps (`None`: all epochs).
    pub max_steps: Option<usize>,
    /// Pairs per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step (their gradients are averaged).
    pub accumulation: usize,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (`None`: off).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Optimizer steps between evaluations and checkpoints.
    pub save_every: usize,
    /// Checkpoints kept besides the best one.
    pub keep_last: usize,
    pub logits_chunk: usize,
    pub reference: ReferenceMode,
    /// Held-out prompts (the first of the eval split) whose per-layer FD and AV are measured
    /// before training and at every evaluation, logged as `probe` lines (0: off).
    pub probe_prompts: usize,
    /// With a regularizer, log the gradient norms of the preference term and of λ·L_reg apart
    /// every step (`grad_norm/pref`, `grad_norm/dec`, `grad_norm/ratio`): a second forward up to
    /// the regularized layer and its backward per micro-batch.
    pub split_grad_norm: bool,
}

impl Default for TrainSettings {
    /// The authors' setup (SPEC section 5) where it applies to one CPU or GPU.
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            warmup_steps: 0,
            decay: Decay::Constant,
            epochs: 10,
            max_steps: None,
            micro_batch: 16,
            accumulation: 8,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            seed: 42,
            save_every: 50,
            keep_last: 2,
            logits_chunk: 64,
            reference: ReferenceMode::Precomputed,
            probe_prompts: 64,
            split_grad_norm: true,
        }
    }
}

impl TrainSettings {
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("micro_batch", self.micro_batch),
            ("accumulation", self.accumulation),
            ("epochs", self.epochs),
            ("save_every", self.save_every),
            ("keep_last", self.keep_last),
            ("logits_chunk", self.logits_chunk),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(AlignError::setting(
                &format!("train.{name}"),
                "must be at least 1",
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(AlignError::setting(
                "train.learning_rate",
                format!("must be positive, got {}", self.learning_rate),
            ));
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return Err(AlignError::setting(
                "train.adam_beta1, train.adam_beta2",
                "must be in [0, 1)",
            ));
        }
        if self.max_grad_norm.is_some_and(|m| m.is_nan() || m <= 0.0) {
            return Err(AlignError::setting(
                "train.max_grad_norm",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// The result of [`train`].
pub struct TrainResult<B: Backend> {
    /// The trained policy (adapters not merged).
    pub policy: Llama<B>,
    pub report: LoopReport,
    /// The checkpoint interval the run resumed from, if any.
    pub resumed_from: Option<usize>,
    /// How λ was set, when the regularizer asks for a gradient ratio.
    pub calibration: Option<Calibration>,
}

/// Marks every parameter as trained (a model that went through `valid()` has none marked).
struct Trainable;

impl<B: Backend> ModuleMapper<B> for Trainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

/// Everything a run needs besides the model and the data.
pub struct RunSpec<'a> {
    pub objective: &'a ObjectiveConfig,
    pub train: &'a TrainSettings,
    pub lora: Option<&'a LoraConfig>,
    /// Run directory: checkpoints, `log.jsonl`, reference log-probs, burn's logs.
    pub dir: &'a Path,
    /// Continue from the newest complete checkpoint in `dir`, if there is one.
    pub resume: bool,
    /// burn's terminal dashboard (else plain lines on stderr).
    pub dashboard: bool,
    /// Identifies the initial weights in the reference cache's file name (e.g. a model path).
    pub model_key: &'a str,
    /// This node's place in a multi-node run (`None` or one node: this machine alone). Every
    /// node is given the same run directory; node 0 alone writes checkpoints.
    pub nodes: Option<&'a NodeSettings>,
}

/// Number of optimizer steps a run over `n_pairs` training pairs takes.
pub fn total_steps(s: &TrainSettings, n_pairs: usize) -> usize {
    let per_epoch = n_pairs.div_ceil(s.micro_batch).div_ceil(s.accumulation);
    let all = per_epoch.saturating_mul(s.epochs);
    s.max_steps.map_or(all, |m| m.min(all))
}

/// The optimizer and schedule of a run, fresh or restored from checkpoint `resumed_from` (the
/// newest one when the run resumes); a fresh run starts a new log.
#[allow(clippy::type_complexity)]
fn start_state<B: AutodiffBackend>(
    model: DecpoModel<B>,
    spec: &RunSpec,
    steps: usize,
    resumed_from: Option<usize>,
    device: &B::Device,
) -> Result<(DecpoModel<B>, Adam<B>, WarmupSchedule)> {
    let s = spec.train;
    let optim = AdamWConfig::new()
        .with_beta_1(s.adam_beta1 as f32)
        .with_beta_2(s.adam_beta2 as f32)
        .with_epsilon(s.adam_epsilon as f32)
        .with_weight_decay(s.weight_decay as f32)
        .init();
    let schedule = WarmupSchedule::new(s.learning_rate, s.warmup_steps, steps, s.decay);
    Ok(match resumed_from {
        Some(k) => restore(
            &spec.dir.join("checkpoint"),
            k,
            model,
            optim,
            schedule,
            device,
        )?,
        None => {
            let _ = std::fs::remove_file(spec.dir.join(log_name(spec)));
            (model, optim, schedule)
        }
    })
}

/// This node's log in the run directory (`log.jsonl` on one node and on node 0).
fn log_name(spec: &RunSpec) -> String {
    spec.nodes
        .map_or_else(|| "log.jsonl".into(), NodeSettings::log_name)
}

/// The nodes of a multi-node run, joined, once they agree that they were started alike.
fn join_nodes<B: AutodiffBackend>(
    spec: &RunSpec,
    policy: &Llama<B>,
    train_set: &PairSet,
    workers: usize,
    resumed_from: Option<usize>,
) -> Result<Option<Arc<Nodes>>> {
    let Some(settings) = spec.nodes.filter(|n| n.is_distributed()) else {
        return Ok(None);
    };
    let inner = policy.valid();
    let nodes = Nodes::join(settings)?;
    let text = |s: String| fingerprint(s.into_bytes());
    let weights: f64 =
        burn::tensor::ElementConversion::elem(inner.embed_tokens.weight.val().sum().into_scalar());
    let data = train_set.pairs.iter().flat_map(|p| {
        [&p.prompt_ids, &p.chosen_ids, &p.rejected_ids]
            .into_iter()
            .flat_map(|ids| {
                ids.iter()
                    .chain(&[u32::MAX])
                    .flat_map(|id| id.to_le_bytes())
            })
    });
    nodes.agree(&[
        ("number of workers (--devices)", workers as u64),
        (
            "model",
            text(format!("{:?} {}", policy.config, weights.to_bits())),
        ),
        ("training pairs", fingerprint(data)),
        (
            "settings ([objective], [train], [lora])",
            text(format!(
                "{:?} {:?} {:?}",
                spec.objective, spec.train, spec.lora
            )),
        ),
        (
            "checkpoint to resume from",
            resumed_from.map_or(u64::MAX, |k| k as u64),
        ),
    ])?;
    Ok(Some(Arc::new(nodes)))
}

/// Checks the run's settings and makes `policy` trainable: LoRA adapters, or every weight
/// (kept in f32 when the model computes in bf16).
fn trainable<B: AutodiffBackend>(
    policy: Llama<B>,
    spec: &RunSpec,
    train_set: &PairSet,
) -> Result<Llama<B>> {
    spec.train.validate()?;
    spec.objective.validate(policy.config.num_hidden_layers)?;
    if train_set.pairs.is_empty() {
        return Err(AlignError::Empty("no training pairs".into()));
    }
    std::fs::create_dir_all(spec.dir).map_err(io_err(spec.dir))?;
    Ok(match spec.lora {
        Some(c) => {
            c.validate(policy.config.num_hidden_layers)
                .map_err(|m| AlignError::setting("lora", m))?;
            policy.with_lora(c, spec.train.seed)
        }
        None => policy.map(&mut Trainable).with_f32_master(),
    })
}

/// Which checkpoints stay: the last `keep_last`, and the one with the lowest held-out loss.
fn checkpointing(keep_last: usize) -> ComposedCheckpointingStrategy {
    let loss_metric = ValueMetric::all(false).swap_remove(0);
    ComposedCheckpointingStrategy::builder()
        .add(KeepLastNCheckpoints::new(keep_last))
        .add(MetricCheckpointingStrategy::new(
            &loss_metric,
            Aggregate::Mean,
            Direction::Lowest,
            Split::Valid,
        ))
        .build()
}

/// The training loader (every optimizer step's pairs fixed up front) and the evaluation loader.
fn loaders<B: AutodiffBackend>(
    train_set: PairSet,
    eval_set: PairSet,
    plan: StepPlan,
    s: &TrainSettings,
    device: &B::Device,
) -> (StepLoader<B>, Arc<StepLoader<B::InnerBackend>>) {
    let eval_plan = plan_eval(eval_set.pairs.len(), s.micro_batch);
    let train = StepLoader::<B>::new(Arc::new(train_set), Arc::new(plan), device.clone());
    let eval =
        StepLoader::<B::InnerBackend>::new(Arc::new(eval_set), Arc::new(eval_plan), device.clone());
    (train, Arc::new(eval))
}

/// Trains `policy` on `train_set`, evaluating on `eval_set` every `save_every` steps, data
/// parallel over `devices` (the first is the main one: optimizer, evaluation, checkpoints).
pub fn train<B: AutodiffBackend>(
    policy: Llama<B>,
    mut train_set: PairSet,
    mut eval_set: PairSet,
    spec: &RunSpec,
    devices: &[B::Device],
) -> Result<TrainResult<B::InnerBackend>> {
    let Some(device) = devices.first() else {
        return Err(AlignError::Empty("no device to train on".into()));
    };
    let s = spec.train;
    let policy = trainable(policy, spec, &train_set)?;
    let steps = total_steps(s, train_set.pairs.len());
    let lengths: Vec<usize> = train_set.pairs.iter().map(|p| p.max_len()).collect();
    let (batch, accumulation) = (s.micro_batch, s.accumulation);
    let plan = plan_steps(&lengths, batch, accumulation, s.epochs, s.seed, steps);
    // Before the reference pass: a node started unlike the others stops here.
    let resumed_from = spec.resume.then(|| latest_checkpoint(spec.dir)).flatten();
    let nodes = join_nodes(spec, &policy, &train_set, devices.len(), resumed_from)?;
    let reference = prepare_reference(&policy, &mut train_set, &mut eval_set, &plan, spec)?;
    let probe = eval_set.prompts(s.probe_prompts);
    let pad_id = eval_set.ids.pad;
    let (train_loader, eval_loader) = loaders::<B>(train_set, eval_set, plan, s, device);

    let model = DecpoModel {
        policy,
        reference,
        settings: StepSettings {
            objective: spec.objective.clone(),
            logits_chunk: s.logits_chunk,
            split_grad_norm: s.split_grad_norm,
            max_grad_norm: s.max_grad_norm,
        },
    };
    let intervals = steps.div_ceil(s.save_every);
    let report = Arc::new(Mutex::new(LoopReport::default()));
    let log_path: PathBuf = spec.dir.join(log_name(spec));
    let (mut model, optim, schedule) = start_state(model, spec, steps, resumed_from, device)?;
    let calibration = set_lambda(
        &mut model,
        &train_loader,
        s.seed,
        &log_path,
        resumed_from.is_some(),
        device,
    )?;
    let checkpoints = Checkpoints::of_run(spec.dir);
    let strategy = DecpoStrategy {
        train: train_loader.clone(),
        devices: devices.to_vec(),
        resumed_from,
        total_steps: steps,
        save_every: s.save_every,
        seed: s.seed,
        print_every: if spec.dashboard {
            0
        } else {
            s.save_every.div_ceil(5).max(1)
        },
        log_path,
        checkpoints: checkpoints.clone(),
        report: report.clone(),
        probe,
        pad_id,
        nodes,
    };
    let mut training = SupervisedTraining::new(spec.dir, Arc::new(train_loader), eval_loader)
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
        .with_checkpointing_strategy(KeepComplete {
            inner: checkpointing(s.keep_last),
            checkpoints,
        })
        .with_metric_logger(InMemoryMetricLogger::default())
        .with_application_logger(None)
        .num_epochs(intervals);
    if spec.nodes.is_none_or(NodeSettings::writes_files) {
        training = training.with_file_checkpointer(AtomicRecorder::default());
    }
    for m in ValueMetric::all(true) {
        training = training.metric_train_numeric(m);
    }
    for m in ValueMetric::all(false) {
        training = training.metric_valid_numeric(m);
    }
    if !spec.dashboard {
        training = training.renderer(PlainRenderer);
    }
    let result = training.launch(Learner::new(model, optim, schedule));
    drop(result.renderer);
    let report = std::mem::take(&mut *report.lock().expect("report lock"));
    if let Some(failure) = &report.failure {
        return Err(AlignError::Stopped(failure.clone()));
    }
    Ok(TrainResult {
        policy: result.model.policy,
        report,
        resumed_from,
        calibration,
    })
}

/// `policy` against `reference` on every pair of `set` (no gradients), averaged over pairs.
pub fn evaluate<B: Backend>(
    policy: &Llama<B>,
    reference: &Llama<B>,
    set: &PairSet,
    settings: &StepSettings,
    micro_batch: usize,
    device: &B::Device,
) -> StepValues {
    let model = DecpoModel {
        policy: policy.clone(),
        reference: Some(reference.clone()),
        settings: settings.clone(),
    };
    let mut total = None;
    for batch in plan_eval(set.pairs.len(), micro_batch) {
        let m = set.micro_batch::<B>(&batch[0], device);
        let v =
            burn::train::InferenceStep::step(&model, crate::train::step::StepInput::whole(vec![m]));
        merge_values(&mut total, v);
    }
    total.unwrap_or_default()
}
