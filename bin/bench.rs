//! `bench`: throughput of the model plus completion log-probs (forward, forward+backward) and of
//! one whole DecPO training step (`--mode decpo_step`, `--lora`), on
//! random weights, printing one JSON line per case. `scripts/bench_torch.py` does the same in
//! PyTorch and `scripts/bench_cpu.sh` prints both side by side.
//!
//! On a GPU, `scripts/gpu/bench.py` runs both on the same card in bf16 and adds peak memory and
//! model-FLOPs utilization. Every timing ends with a device sync, so GPU work is counted.
//!
//! cargo run --release --bin bench -- --config all --batch 4 --seq 128
//! cargo run --release --features cuda --bin bench -- --config llama-3.2-1b --mode decpo_step --dtype bf16

use std::time::Instant;

use anyhow::bail;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use clap::Parser;
use decpo::backend;
use decpo_model::{LlamaConfig, Precision, completion_logps};

#[derive(Parser, Debug, Clone)]
#[command(about = "Throughput of the Llama forward and forward+backward passes")]
struct Args {
    /// tiny, smollm2-135m, llama-3.2-1b, ... or all (tiny and smollm2-135m).
    #[arg(long, default_value = "all")]
    config: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Positions unembedded at a time in the log-prob computation.
    #[arg(long, default_value_t = 64)]
    logits_chunk: usize,
    /// forward, forward_backward, decpo_step or all; default: forward and forward_backward.
    #[arg(long)]
    mode: Option<String>,
    /// decpo_step with LoRA (r 8, α 16, dropout 0.05 on q_proj, v_proj, up_proj); the reference is
    /// then the policy without adapters, else a frozen copy.
    #[arg(long)]
    lora: bool,
    /// What the model computes in: f32, or bf16 (cuda, wgpu and flex builds).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
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
    args: &Args,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let shape = [args.batch, args.seq];
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

fn report(config: &str, args: &Args, mode: &str, secs: f64) {
    let rows = if mode == "decpo_step" { 2 } else { 1 };
    let tokens = (rows * args.batch * args.seq) as f64;
    let mut line = serde_json::json!({
        "impl": "decpo-burn",
        "backend": backend::name(),
        "config": config,
        "batch": args.batch,
        "seq": args.seq,
        "mode": mode,
        "dtype": args.dtype.name(),
        "tokens_per_s": tokens / secs,
        "ms_per_iter": secs * 1e3,
        "threads": threads(),
    });
    if mode == "decpo_step" {
        line["lora"] = args.lora.into();
        line["peak_rss_mib"] = peak_rss_mib().into();
    }
    println!("{line}");
}

/// One DecPO training step as scripts/bench_torch.py's `decpo_step` defines it: B pairs as 2B
/// rows of T random tokens, the first T/2 (the prompt) shared within a pair, completion mask on
/// the rest; sigmoid DPO (β 0.1, summed log-probs) + 1e-4 · paper regularizer at layer n/3;
/// backward, global-norm clip 1.0, AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, no decay).
fn bench_decpo_step(name: &str, args: &Args) -> anyhow::Result<()> {
    use burn::module::Module;
    use burn::optim::{AdamWConfig, Optimizer};
    use burn::train::TrainStep;
    use decpo_alignment::train::step::{
        DecpoModel, MicroBatch, StepInput, StepSettings, finish_grads,
    };
    use decpo_alignment::{ObjectiveConfig, Regularizer};
    use decpo_model::{CompletionBatch, LoraConfig};

    let device = backend::device();
    let config = LlamaConfig::preset(name).expect("checked in main");
    backend::Autodiff::seed(&device, 0);
    let base = config.init::<backend::Autodiff>(&device);
    // As `train` does: full fine-tuning keeps f32 master weights (a no-op in f32).
    let base = if args.lora {
        base
    } else {
        base.with_f32_master()
    };
    let (policy, reference) = if args.lora {
        (base.with_lora(&LoraConfig::new()), None)
    } else {
        (base.clone(), Some(base.no_grad()))
    };
    let mut model = DecpoModel {
        policy,
        reference,
        settings: StepSettings {
            objective: ObjectiveConfig {
                regularizer: Some(Regularizer::paper(config.num_hidden_layers)),
                ..ObjectiveConfig::default()
            },
            logits_chunk: args.logits_chunk,
            max_grad_norm: Some(1.0),
        },
    };
    let (b, t) = (args.batch, args.seq);
    let (ids, _) = inputs::<backend::Autodiff>(
        &config,
        &Args {
            batch: 2 * b,
            ..args.clone()
        },
        &device,
    );
    // Rejected rows share their pair's prompt.
    let prompt = ids.clone().slice([0..b, 0..t / 2]);
    let ids = ids.slice_assign([b..2 * b, 0..t / 2], prompt);
    let positions = Tensor::<backend::Autodiff, 1, Int>::arange(0..t as i64, &device)
        .unsqueeze::<2>()
        .repeat_dim(0, 2 * b);
    let completion_mask = positions.greater_equal_elem((t / 2) as i64).int();
    let input = StepInput::whole(vec![MicroBatch {
        batch: CompletionBatch {
            attention_mask: ids.ones_like(),
            input_ids: ids,
            completion_mask,
        },
        reference: None,
        pairs: b,
        tokens: 2 * b * t,
    }]);
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init::<backend::Autodiff, DecpoModel<backend::Autodiff>>();
    let mut state = Some(model);
    let mut loss = 0.0;
    let secs = time(args.warmup, args.iters, || {
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
    model = state
        .take()
        .ok_or_else(|| anyhow::anyhow!("{name}: non-finite DecPO loss {loss}"))?;
    drop(model);
    report(name, args, "decpo_step", secs);
    Ok(())
}

fn bench(name: &str, args: &Args, modes: &[&str]) -> anyhow::Result<()> {
    if modes.contains(&"decpo_step") {
        bench_decpo_step(name, args)?;
    }
    let device = backend::device();
    let config = LlamaConfig::preset(name).expect("checked in main");
    backend::Backend::seed(&device, 0);

    if modes.contains(&"forward") {
        let model = config.init::<backend::Backend>(&device);
        let (ids, mask) = inputs::<backend::Backend>(&config, args, &device);
        let secs = time(args.warmup, args.iters, || {
            let out = model.forward(ids.clone(), mask.clone(), &[]);
            let logps = completion_logps(
                &model,
                out.hidden,
                ids.clone(),
                mask.clone(),
                args.logits_chunk,
            );
            logps.sum.into_data();
        })?;
        report(name, args, "forward", secs);
        drop(model);
    }

    if modes.contains(&"forward_backward") {
        let model = config.init::<backend::Autodiff>(&device);
        let (ids, mask) = inputs::<backend::Autodiff>(&config, args, &device);
        let secs = time(args.warmup, args.iters, || {
            let out = model.forward(ids.clone(), mask.clone(), &[]);
            let logps = completion_logps(
                &model,
                out.hidden,
                ids.clone(),
                mask.clone(),
                args.logits_chunk,
            );
            let loss = logps.sum.sum().neg() / (args.batch * args.seq) as f64;
            let grads = loss.backward();
            drop(grads);
        })?;
        report(name, args, "forward_backward", secs);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let names: Vec<&str> = match args.config.as_str() {
        "all" => vec!["tiny", "smollm2-135m"],
        one => vec![one],
    };
    for name in &names {
        if LlamaConfig::preset(name).is_none() {
            bail!(
                "unknown --config `{name}` (tiny, smollm2-135m, llama-3.2-1b, llama-3-8b, llama-2-7b, all)"
            );
        }
    }
    if args.batch == 0 || args.seq < 2 || args.iters == 0 {
        bail!("--batch must be >= 1, --seq >= 2 and --iters >= 1");
    }
    let modes: Vec<&str> = match args.mode.as_deref() {
        None => vec!["forward", "forward_backward"],
        Some("all") => vec!["forward", "forward_backward", "decpo_step"],
        Some(m @ ("forward" | "forward_backward" | "decpo_step")) => vec![m],
        Some(other) => {
            bail!("unknown --mode `{other}` (forward, forward_backward, decpo_step, all)")
        }
    };
    backend::prepare::<backend::Autodiff>(&backend::device(), args.dtype)?;
    for name in names {
        bench(name, &args, &modes)?;
    }
    Ok(())
}
