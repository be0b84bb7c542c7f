//! The training loop, plugged into burn-train's `SupervisedTraining` as a custom strategy so that
//! the dashboard, metric store and checkpointer are burn's while the loop counts optimizer steps:
//!
//! - a burn-train "epoch" is one checkpoint interval of `save_every` optimizer steps; after each,
//!   the eval split runs and a checkpoint is written (model, optimizer, schedule), keeping the
//!   last `keep_last` and the best by eval loss;
//! - every checkpoint file is written to a temporary file and renamed, an older checkpoint is
//!   deleted only once a newer one is complete, and a checkpoint that cannot be written (a full
//!   disk) stops the run with an error, the newest complete one left to resume from
//!   ([`crate::train::checkpoint`]);
//! - step `s` reseeds the backend RNG with `seed + s` (LoRA dropout) and always gets the same pairs
//!   (see [`crate::train::data`]), so resuming from a checkpoint (loaded by
//!   [`crate::train::restore`]) replays an uninterrupted run;
//! - a non-finite loss or gradient norm stops the run before the optimizer step, naming the
//!   step; the last good checkpoint stays as it was;
//! - data parallel over one or more devices with burn-train's multi-device machinery, as its
//!   `MultiDevice` strategy with the optimizer on the main device: a `MultiDevicesTrainStep`
//!   worker per device runs its shard of each step's micro-batches on a fork of the model, the
//!   gradients are moved to the main device and summed (`GradientsAccumulator`), then clipped
//!   and applied once. One device goes through the same path with one worker. Since the shards
//!   of a step are its micro-batches, a step's gradient is the same for any number of devices
//!   (up to the order of the float sums); evaluation, probes and checkpoints use the main device.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::MetricDefinition;
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::train::{MultiDevicesTrainStep, MultiTrainOutput};
use burn::train::{
    EventProcessorTraining, Learner, LearnerEvent, LearningComponentsMarker,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents,
    TrainingItem, ValidLoader,
};
use decpo_model::Llama;
use serde::{Deserialize, Serialize};

use crate::error::AlignError;
use crate::measure::{LayerMeasure, measure_layers};
use crate::train::checkpoint::Checkpoints;
use crate::train::data::StepLoader;
use crate::train::nodes::Nodes;
use crate::train::schedule::WarmupSchedule;
use crate::train::step::{DecpoModel, StepValues, finish_grads};

/// A renderer that draws nothing: used off a terminal, where the loop prints plain lines.
pub struct PlainRenderer;

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
    fn render_train(&mut self, _item: TrainingProgress, _p: Vec<ProgressType>) {}
    fn render_valid(&mut self, _item: TrainingProgress, _p: Vec<ProgressType>) {}
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _p: Vec<ProgressType>) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}

/// One line of the run's `log.jsonl`.
#[derive(Serialize)]
struct LogLine<'a> {
    split: &'a str,
    step: usize,
    #[serde(flatten)]
    values: &'a StepValues,
}

/// Eval results of one checkpoint interval, averaged over the eval pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub values: StepValues,
}

/// Per-layer FD/AV of the policy at one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbePoint {
    pub step: usize,
    pub layers: Vec<LayerMeasure>,
}

/// What the loop reports back besides the model.
#[derive(Debug, Default)]
pub struct LoopReport {
    /// Set when the run stopped on a non-finite loss or gradient.
    pub failure: Option<String>,
    pub evals: Vec<EvalPoint>,
    /// FD/AV of every layer on the probe prompts, by optimizer step (0 = before training).
    pub probes: Vec<ProbePoint>,
    pub steps_done: usize,
    pub seconds: f64,
}

/// The loop's settings.
pub struct DecpoStrategy<B: AutodiffBackend> {
    /// The training steps; the loop reads one shard of it per device.
    pub train: StepLoader<B>,
    /// Where the steps run, the main device first (optimizer, evaluation, checkpoints).
    pub devices: Vec<B::Device>,
    /// The checkpoint interval the learner was restored from ([`crate::train::restore`]).
    pub resumed_from: Option<usize>,
    pub total_steps: usize,
    pub save_every: usize,
    pub seed: u64,
    /// Print a plain line every this many steps (0 = never; the dashboard shows them instead).
    pub print_every: usize,
    pub log_path: PathBuf,
    /// The run's checkpoints, to check that each was written and prune the last ones.
    pub checkpoints: Checkpoints,
    pub report: Arc<Mutex<LoopReport>>,
    /// Prompts whose per-layer FD/AV is measured before training and at every evaluation
    /// (empty: none), right-padded with `pad_id`.
    pub probe: Vec<Vec<u32>>,
    pub pad_id: u32,
    /// The other nodes of a multi-node run ([`crate::train::nodes`]): this node's workers are
    /// numbers `rank · devices ..` of all nodes' workers in each step's shares and seeds.
    pub nodes: Option<Arc<Nodes>>,
}

/// Folds `v` into the pair-weighted average `acc` (values of no pairs count for nothing).
pub fn merge_values(acc: &mut Option<StepValues>, mut v: StepValues) {
    let Some(a) = acc.as_mut().filter(|a| a.pairs > 0) else {
        *acc = Some(v);
        return;
    };
    if v.pairs == 0 {
        return;
    }
    let (wa, wb) = (a.pairs as f64, v.pairs as f64);
    let w = (wa + wb).max(1.0);
    let mix = |x: f64, y: f64| (x * wa + y * wb) / w;
    for (x, y) in a.pair_means_mut().into_iter().zip(v.pair_means_mut()) {
        *x = mix(*x, *y);
    }
    a.fd = match (a.fd, v.fd) {
        (Some(x), Some(y)) => Some(mix(x, y)),
        _ => None,
    };
    a.pairs += v.pairs;
    a.tokens += v.tokens;
    // The split of the gradient norm is per device: norms of parts do not add up.
    a.grad_norm_pref = None;
    a.grad_norm_dec = None;
    a.grad_norm_ratio = None;
}

/// Plain one-line summary of a step's values.
pub fn describe(v: &StepValues) -> String {
    let mut s = format!(
        "loss {:.4} | rewards/accuracies {:.3} | rewards/margins {:.4} | logps/chosen {:.2} | logps/rejected {:.2}",
        v.loss, v.rewards_accuracies, v.rewards_margins, v.logps_chosen, v.logps_rejected
    );
    if let Some(fd) = v.fd {
        s += &format!(" | loss/regularizer {:.4} | fd {:.4}", v.loss_reg, fd);
    }
    if let Some(g) = v.grad_norm {
        s += &format!(" | grad_norm {g:.3}");
    }
    if let Some(r) = v.grad_norm_ratio {
        s += &format!(" | grad_norm/ratio {r:.4}");
    }
    if let Some(t) = v.tokens_per_s {
        s += &format!(" | {t:.0} tok/s");
    }
    s
}

type Components<B, O> = LearningComponentsMarker<B, WarmupSchedule, DecpoModel<B>, O>;

impl<B: AutodiffBackend> DecpoStrategy<B> {
    fn log(&self, split: &str, step: usize, values: &StepValues) {
        let line = serde_json::to_string(&LogLine {
            split,
            step,
            values,
        })
        .expect("step values serialise");
        self.append(&line);
    }

    /// Completes step `step`'s values with its speed and learning rate, logs them and (every
    /// `print_every` steps) prints them.
    fn record_step(&self, step: usize, values: &mut StepValues, seconds: f64, lr: f64) {
        values.tokens_per_s = Some(values.tokens as f64 / seconds.max(1e-9));
        values.learning_rate = Some(lr);
        self.log("train", step, values);
        if self.print_every > 0 && (step.is_multiple_of(self.print_every) || step == 1) {
            eprintln!("step {step}/{} | {}", self.total_steps, describe(values));
        }
    }

    /// Measures the probe prompts on `policy` and logs them as a `probe` line.
    fn probe<I: Backend>(&self, policy: &Llama<I>, step: usize) -> Option<ProbePoint> {
        if self.probe.is_empty() {
            return None;
        }
        let device = policy.embed_tokens.weight.device();
        let layers: Vec<usize> = (0..policy.config.num_hidden_layers).collect();
        let point = ProbePoint {
            step,
            layers: measure_layers(policy, &self.probe, self.pad_id, 16, &layers, &device),
        };
        let line = serde_json::json!({"split": "probe", "step": step, "layers": point.layers});
        self.append(&line.to_string());
        Some(point)
    }

    fn append(&self, line: &str) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            log::warn!("cannot append to {}: {e}", self.log_path.display());
        }
    }

    /// Evaluates the policy after step `step` on the held-out pairs, logging and printing the
    /// means.
    fn evaluate<O>(
        &self,
        learner: &Learner<Components<B, O>>,
        loader: &ValidLoader<Components<B, O>>,
        global: &Progress,
        processor: &mut SupervisedTrainingEventProcessor<Components<B, O>>,
        step: usize,
    ) -> Option<EvalPoint>
    where
        O: Optimizer<DecpoModel<B>, B> + 'static,
    {
        let model = learner.model().valid();
        let mut iter = loader.iter();
        let mut total = None;
        let mut i = 0;
        while let Some(item) = iter.next() {
            i += 1;
            let values = burn::train::InferenceStep::step(&model, item);
            merge_values(&mut total, values.clone());
            let item = TrainingItem::new(values, iter.progress(), global.clone(), Some(i), None);
            processor.process_valid(LearnerEvent::ProcessedItem(item));
        }
        processor.process_valid(LearnerEvent::EndEpoch(global.items_processed));
        let values = total?;
        self.log("eval", step, &values);
        if self.print_every > 0 {
            eprintln!("eval at step {step} | {}", describe(&values));
        }
        Some(EvalPoint { step, values })
    }
}

/// One step's gradients summed over the devices' outputs on `main`, in device order (a fixed
/// order of the sums whatever order the workers finish in), with the merged values.
fn gather<B: AutodiffBackend>(
    model: &DecpoModel<B>,
    mut outputs: Vec<MultiTrainOutput<StepValues>>,
    main: &B::Device,
) -> (GradientsParams, StepValues) {
    outputs.sort_by_key(|o| o.device);
    let mut sum = GradientsAccumulator::new();
    let mut merged = None;
    for o in outputs {
        sum.accumulate(model, o.output.grads.to_device(main, model));
        merge_values(&mut merged, o.output.item);
    }
    (sum.grads(), merged.unwrap_or_default())
}

/// Why a run stops at `step` whose loss or gradient norm is not finite.
fn non_finite(step: usize, values: &StepValues) -> String {
    format!(
        "step {step}: the loss ({}) or the gradient norm ({}) is not finite; stopped before the \
         optimizer step, checkpoints left as they were",
        values.loss,
        values.grad_norm.unwrap_or(f64::NAN)
    )
}

impl<B: AutodiffBackend> DecpoStrategy<B> {
    /// Once every write has finished: an error when the newest checkpoint asked for (`asked`)
    /// was not written, else `None` after pruning the checkpoints it supersedes.
    fn unwritten(&self, asked: Option<usize>, done: usize, why: Option<String>) -> Option<String> {
        let latest = self.checkpoints.latest();
        let why = why.unwrap_or_else(|| "no reason given".into());
        match asked {
            Some(k) if latest < Some(k) => Some(format!(
                "checkpoint {k} could not be written ({why}); stopped after step {done}. {}",
                latest.map_or_else(
                    || "No complete checkpoint is left: start the run again".into(),
                    |l| format!(
                        "Checkpoint {l} (step {}) is complete: make room and continue with --resume",
                        (l * self.save_every).min(self.total_steps)
                    )
                )
            )),
            _ => self
                .checkpoints
                .prune()
                .err()
                .map(|e| format!("pruning old checkpoints: {e}")),
        }
    }
}

/// The seed of step `step` on device `d`: `seed + step` on the main device (a run on one device
/// draws what it always drew), another stream on each other device.
pub(crate) fn step_seed(seed: u64, step: usize, d: usize) -> u64 {
    seed.wrapping_add(step as u64)
        .wrapping_add((d as u64) << 32)
}

impl<B, O> SupervisedLearningStrategy<Components<B, O>> for DecpoStrategy<B>
where
    B: AutodiffBackend,
    O: Optimizer<DecpoModel<B>, B> + 'static,
{
    fn fit(
        &self,
        components: TrainingComponents<Components<B, O>>,
        mut learner: Learner<Components<B, O>>,
        _train: TrainLoader<Components<B, O>>,
        valid: ValidLoader<Components<B, O>>,
        _starting_epoch: usize,
    ) -> (
        DecpoModel<B>,
        SupervisedTrainingEventProcessor<Components<B, O>>,
    ) {
        let starting_epoch = self.resumed_from.map_or(1, |k| k + 1);
        let main = self.devices[0].clone();
        learner.fork(&main);
        // This node's workers are numbers rank · devices .. of nodes · devices.
        let (rank, nodes) =
            (self.nodes.as_ref()).map_or((0, 1), |n| (n.settings().rank, n.settings().nodes));
        let local = self.devices.len();
        let (first_worker, all_workers) = (rank * local, nodes * local);
        let shards = self.train.shards(&self.devices, first_worker, all_workers);
        let workers = MultiDevicesTrainStep::<Components<B, O>>::new(&self.devices);
        let mut processor = components.event_processor;
        let mut checkpointer = components.checkpointer;
        let interrupter = components.interrupter;
        let intervals = components.num_epochs;
        let start = Instant::now();
        let mut done = (starting_epoch - 1) * self.save_every;
        let mut failure = None;
        let mut asked = None;
        let mut evals = Vec::new();
        let mut probes = Vec::new();
        if starting_epoch == 1 {
            probes.extend(self.probe(&learner.model().valid().policy, 0));
        }

        'intervals: for k in starting_epoch..=intervals {
            let global = Progress::new(k, intervals);
            let first = (k - 1) * self.save_every;
            let last = (k * self.save_every).min(self.total_steps);
            let loaders: Vec<_> = shards.iter().map(|s| s.slice(first, last)).collect();
            let mut iters: Vec<_> = loaders.iter().map(|l| l.iter()).collect();
            for i in 1..=last - first {
                let step = first + i;
                for (d, device) in self.devices.iter().enumerate() {
                    B::seed(device, step_seed(self.seed, step, first_worker + d));
                }
                learner.lr_step();
                let t0 = Instant::now();
                let model = learner.model();
                let (outputs, _) = workers.step(&mut iters, &model);
                let (mut grads, mut values) = gather(&model, outputs, &main);
                if let Some(nodes) = &self.nodes {
                    match nodes.sum_step(&model, grads, &values, step, &main) {
                        Ok(summed) => (grads, values) = summed,
                        Err(e) => {
                            failure = Some(match e {
                                AlignError::Stopped(why) => why,
                                e => e.to_string(),
                            });
                            interrupter.stop(failure.as_deref());
                            break 'intervals;
                        }
                    }
                }
                values.grad_norm = Some(finish_grads(&model, &mut grads));
                if !values.is_finite() {
                    failure = Some(non_finite(step, &values));
                    interrupter.stop(failure.as_deref());
                    break 'intervals;
                }
                learner.optimizer_step(grads);
                let lr = learner.lr_current();
                self.record_step(step, &mut values, t0.elapsed().as_secs_f64(), lr);
                let progress = Progress::new(i, last - first);
                let item = TrainingItem::new(values, progress, global.clone(), Some(i), Some(lr));
                processor.process_train(LearnerEvent::ProcessedItem(item));
                done = step;
                if interrupter.should_stop() {
                    break 'intervals;
                }
            }
            processor.process_train(LearnerEvent::EndEpoch(k));
            evals.extend(self.evaluate(&learner, &valid, &global, &mut processor, done));
            probes.extend(self.probe(&learner.model().valid().policy, done));
            if interrupter.should_stop() {
                break;
            }
            if let Some(c) = &mut checkpointer {
                c.checkpoint(&learner, k, &components.event_store);
                asked = Some(k);
            }
        }
        // Dropping the checkpointer waits for its writes to finish.
        drop(checkpointer);
        // (Only node 0 of a multi-node run writes and prunes checkpoints.)
        let writes = (self.nodes.as_ref()).is_none_or(|n| n.settings().writes_files());
        if failure.is_none() && writes {
            failure = self.unwritten(asked, done, interrupter.get_message());
        }
        let mut report = self.report.lock().expect("report lock");
        report.failure = failure;
        report.evals = evals;
        report.probes = probes;
        report.steps_done = done;
        report.seconds = start.elapsed().as_secs_f64();
        (learner.model(), processor)
    }
}
