//! The throughput benchmarks of `bench`: the model plus completion log-probs (forward,
//! forward+backward) and one whole DecPO training step, on random weights; one JSON line per
//! case, the same fields as `scripts/bench_torch.py` prints.

use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use decpo_model::{LlamaConfig, Precision, completion_logps};

use burn::module::Module;
use burn::optim::{AdamWConfig, Optimizer};
use burn::train::TrainStep;
use decpo_alignment::train::step::{DecpoModel, MicroBatch, StepInput, StepSettings, finish_grads};
use decpo_alignment::{ObjectiveConfig, Regularizer, Site};
use decpo_model::{CompletionBatch, LoraConfig};

use crate::backend::{self, Autodiff};

/// One benchmark case: the shape, how long to time it, and what the step trains.
#[derive(Debug, Clone)]
pub struct BenchCase {
    pub batch: usize,
    pub seq: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Positions unembedded at a time in the log-prob computation.
    pub logits_chunk: usize,
    /// decpo_step with LoRA (the authors' adapters); else full fine-tuning and a frozen copy.
    pub lora: bool,
    pub dtype: Precision,
    /// decpo_step: the prompt tokens at the start of each row, shared within a pair.
    pub prompt: usize,
}

/// Seconds per iteration of `step`, after `warmup` untimed ones; the device is synchronised
/// before the clock starts and before it stops.
fn time(warmup: usize, iters: usize, mut step: impl FnMut()) -> anyhow::Result<f64> {
    let device = backend::device();
    let sync = || {
        backend::Backend::sync(&device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))
    };
    for _ in 0..warmup {
        step();
    }
    sync()?;
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    sync()?;
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

fn inputs<B: Backend>(
    c: &LlamaConfig,
    case: &BenchCase,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let shape = [case.batch, case.seq];
    let ids = Tensor::<B, 2>::random(
        shape,
        Distribution::Uniform(0.0, c.vocab_size as f64),
        device,
    )
    .int();
    (ids, Tensor::ones(shape, device))
}

/// Worker threads of the CPU backend (rayon): RAYON_NUM_THREADS or the number of cores.
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Peak resident memory of this process so far, MiB (Linux: VmHWM).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn report(config: &str, case: &BenchCase, mode: &str, secs: f64) {
    let rows = if mode == "decpo_step" { 2 } else { 1 };
    let tokens = (rows * case.batch * case.seq) as f64;
    let mut line = serde_json::json!({
        "impl": "decpo-burn",
        "backend": backend::name(),
        "preset": config,
        "batch": case.batch,
        "seq": case.seq,
        "mode": mode,
        "dtype": case.dtype.name(),
        "tokens_per_s": tokens / secs,
        "ms_per_iter": secs * 1e3,
        "threads": threads(),
    });
    if mode == "decpo_step" {
        line["lora"] = case.lora.into();
        line["prompt"] = case.prompt.into();
        line["peak_rss_mib"] = peak_rss_mib().into();
    }
    println!("{line}");
}

/// The policy of the DecPO step, with its reference and the step's settings: sigmoid DPO (β 0.1,
/// summed log-probs) + 1e-4 · paper regularizer at layer n/3, global-norm clip 1.0.
fn decpo_model(config: &LlamaConfig, case: &BenchCase) -> DecpoModel<Autodiff> {
    let device = backend::device();
    Autodiff::seed(&device, 0);
    let base = config.init::<Autodiff>(&device);
    // As `train` does: full fine-tuning keeps f32 master weights (a no-op in f32).
    let (policy, reference) = if case.lora {
        (base.with_lora(&LoraConfig::new(), 0), None)
    } else {
        let base = base.with_f32_master();
        (base.clone(), Some(base.no_grad()))
    };
    DecpoModel {
        policy,
        reference,
        settings: StepSettings {
            objective: ObjectiveConfig {
                // scripts/bench_torch.py takes the rows at the last real token.
                regularizer: Some(Regularizer {
                    site: Site::Eos,
                    ..Regularizer::paper(config.num_hidden_layers)
                }),
                ..ObjectiveConfig::default()
            },
            logits_chunk: case.logits_chunk,
            max_grad_norm: Some(1.0),
            // The same work as scripts/bench_torch.py's step: no second forward for the split.
            split_grad_norm: false,
        },
    }
}

/// B pairs as 2B rows of T random tokens, the first `prompt` shared within a pair, completion
/// mask on the rest.
fn decpo_input(config: &LlamaConfig, case: &BenchCase) -> StepInput<Autodiff> {
    let device = backend::device();
    let (b, t, p) = (case.batch, case.seq, case.prompt);
    let rows = BenchCase {
        batch: 2 * b,
        ..case.clone()
    };
    let (ids, _) = inputs::<Autodiff>(config, &rows, &device);
    // Rejected rows share their pair's prompt (none with prompt 0: the rows share nothing).
    let ids = match p {
        0 => ids,
        _ => {
            let prompt = ids.clone().slice([0..b, 0..p]);
            ids.slice_assign([b..2 * b, 0..p], prompt)
        }
    };
    let positions = Tensor::<Autodiff, 1, Int>::arange(0..t as i64, &device)
        .unsqueeze::<2>()
        .repeat_dim(0, 2 * b);
    let completion_mask = positions.greater_equal_elem(p as i64).int();
    StepInput::whole(vec![MicroBatch {
        batch: CompletionBatch {
            attention_mask: ids.ones_like(),
            // Random ids: no row ends in a marked EOS.
            eos_mask: ids.zeros_like(),
            input_ids: ids,
            completion_mask,
        },
        reference: None,
        pairs: b,
        tokens: 2 * b * t,
    }])
}

/// One DecPO training step as scripts/bench_torch.py's `decpo_step` defines it (see
/// [`decpo_model`] and [`decpo_input`]): forward, backward, clip, AdamW (lr 1e-5, betas
/// 0.9/0.999, eps 1e-8, no decay).
fn bench_decpo_step(name: &str, case: &BenchCase) -> anyhow::Result<()> {
    let config = LlamaConfig::preset(name).with_context(|| format!("unknown preset `{name}`"))?;
    let input = decpo_input(&config, case);
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init::<Autodiff, DecpoModel<Autodiff>>();
    let mut state = Some(decpo_model(&config, case));
    let mut loss = 0.0;
    let secs = time(case.warmup, case.iters, || {
        let Some(m) = state.take() else { return };
        let mut out = m.step(input.clone());
        finish_grads(&m, &mut out.grads);
        loss = out.item.loss;
        state = out
            .item
            .loss
            .is_finite()
            .then(|| optim.step(1e-5, m, out.grads));
    })?;
    state
        .take()
        .ok_or_else(|| anyhow::anyhow!("{name}: non-finite DecPO loss {loss}"))?;
    report(name, case, "decpo_step", secs);
    Ok(())
}

/// The model's forward pass and the summed log-probs of every row (all tokens count).
fn logps<B: Backend>(
    model: &decpo_model::Llama<B>,
    ids: &Tensor<B, 2, Int>,
    mask: &Tensor<B, 2, Int>,
    chunk: usize,
) -> Tensor<B, 1> {
    let out = model.forward(ids.clone(), mask.clone(), &[]);
    completion_logps(model, out.hidden, ids.clone(), mask.clone(), chunk).sum
}

/// Runs the `modes` (forward, forward_backward, decpo_step) of `name`, printing one JSON line each.
pub fn bench(name: &str, case: &BenchCase, modes: &[&str]) -> anyhow::Result<()> {
    if modes.contains(&"decpo_step") {
        bench_decpo_step(name, case)?;
    }
    let device = backend::device();
    let config = LlamaConfig::preset(name).with_context(|| format!("unknown preset `{name}`"))?;
    backend::Backend::seed(&device, 0);

    if modes.contains(&"forward") {
        let model = config.init::<backend::Backend>(&device);
        let (ids, mask) = inputs::<backend::Backend>(&config, case, &device);
        let secs = time(case.warmup, case.iters, || {
            logps(&model, &ids, &mask, case.logits_chunk).into_data();
        })?;
        report(name, case, "forward", secs);
        drop(model);
    }

    if modes.contains(&"forward_backward") {
        let model = config.init::<Autodiff>(&device);
        let (ids, mask) = inputs::<Autodiff>(&config, case, &device);
        let secs = time(case.warmup, case.iters, || {
            let sum = logps(&model, &ids, &mask, case.logits_chunk);
            let loss = sum.sum().neg() / (case.batch * case.seq) as f64;
            let grads = loss.backward();
            drop(grads);
        })?;
        report(name, case, "forward_backward", secs);
    }
    Ok(())
}
