//! `bench`: throughput of the model plus completion log-probs (forward, forward+backward) and of
//! one whole DecPO training step (`--mode decpo_step`, `--lora`), on
//! random weights, printing one JSON line per case. `scripts/bench_torch.py` does the same in
//! PyTorch and `scripts/bench_cpu.sh` prints both side by side.
//!
//! On a GPU, `scripts/gpu/bench.py` runs both on the same card in bf16 and adds peak memory and
//! model-FLOPs utilization. Every timing ends with a device sync, so GPU work is counted.
//!
//! cargo run --release --bin bench -- --preset all --batch 4 --seq 128
//! cargo run --release --features cuda --bin bench -- --preset llama-3.2-1b --mode decpo_step --dtype bf16

use anyhow::bail;
use clap::Parser;
use decpo::backend;
use decpo::bench::{BenchCase, bench};
use decpo_model::{LlamaConfig, Precision};

#[derive(Parser, Debug, Clone)]
#[command(about = "Throughput of the Llama forward and forward+backward passes")]
struct Args {
    /// Model shape: tiny, smollm2-135m, llama-3.2-1b, ... or all (tiny and smollm2-135m).
    #[arg(long, default_value = "all")]
    preset: String,
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
    /// decpo_step: the prompt tokens at the start of each row, shared by a pair's two rows (the
    /// rest is the completion); default seq / 2. 0: the rows share nothing, so the step runs
    /// every row whole (the same work as a step without prompt sharing).
    #[arg(long)]
    prompt: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let names: Vec<&str> = match args.preset.as_str() {
        "all" => vec!["tiny", "smollm2-135m"],
        one => vec![one],
    };
    for name in &names {
        if LlamaConfig::preset(name).is_none() {
            bail!(
                "unknown --preset `{name}` (tiny, smollm2-135m, llama-3.2-1b, llama-3-8b, llama-2-7b, all)"
            );
        }
    }
    if args.batch == 0 || args.seq < 2 || args.iters == 0 {
        bail!("--batch must be >= 1, --seq >= 2 and --iters >= 1");
    }
    let prompt = args.prompt.unwrap_or(args.seq / 2);
    if prompt >= args.seq {
        bail!("--prompt must be between 0 and --seq - 1, got {prompt}");
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
    let case = BenchCase {
        batch: args.batch,
        seq: args.seq,
        iters: args.iters,
        warmup: args.warmup,
        logits_chunk: args.logits_chunk,
        lora: args.lora,
        prompt,
        dtype: args.dtype,
    };
    for name in names {
        bench(name, &case, &modes)?;
    }
    Ok(())
}
