//! `bench`: forward and forward+backward throughput of the model plus completion log-probs, on
//! random weights, printing one JSON line per case. `scripts/bench_torch.py` does the same in
//! PyTorch and `scripts/bench_cpu.sh` prints both side by side.
//!
//! cargo run --release --bin bench -- --config all --batch 4 --seq 128

mod backend;

use std::time::Instant;

use anyhow::bail;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use clap::Parser;
use decpo_model::{LlamaConfig, completion_logps};

#[derive(Parser, Debug)]
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
}

/// Seconds per iteration of `step`, after `warmup` untimed ones.
fn time(warmup: usize, iters: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        step();
    }
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    start.elapsed().as_secs_f64() / iters as f64
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

fn report(config: &str, args: &Args, mode: &str, secs: f64) {
    let tokens = (args.batch * args.seq) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "decpo-burn",
            "backend": backend::name(),
            "config": config,
            "batch": args.batch,
            "seq": args.seq,
            "mode": mode,
            "tokens_per_s": tokens / secs,
            "ms_per_iter": secs * 1e3,
            "threads": threads(),
        })
    );
}

fn bench(name: &str, args: &Args) {
    let device = backend::device();
    let config = LlamaConfig::preset(name).expect("checked in main");
    backend::Backend::seed(&device, 0);

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
    });
    report(name, args, "forward", secs);
    drop(model);

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
    });
    report(name, args, "forward_backward", secs);
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
    for name in names {
        bench(name, &args);
    }
    Ok(())
}
