//! `generate`: continue a prompt with a GGUF file or a Hugging Face directory, using the KV cache.
//!
//! cargo run --release --bin generate -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --prompt "The capital of France is" --max-new-tokens 16
//!
//! With `--prompts FILE` (one prompt per line) the prompts are decoded together, 32 at a time,
//! and each completion is printed as a JSON line `{"prompt": ..., "completion": ...}`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use decpo::backend;
use decpo_model::{ChatMessage, GENERATION_BATCH, SamplingConfig, generate_batch, load_pretrained};

#[derive(Parser, Debug)]
#[command(about = "Generate text with a Llama model (GGUF file or Hugging Face directory)")]
struct Args {
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (the user message with --chat).
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,
    /// A file of prompts, one per line (empty lines skipped), decoded in batches.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.temperature < 0.0 {
        bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    let device = backend::device();
    let start = Instant::now();
    let pretrained = load_pretrained::<backend::Backend>(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = pretrained
        .tokenizer
        .with_context(|| format!("{} has no tokenizer (tokenizer.json)", args.model.display()))?;
    let model = pretrained.model;
    eprintln!(
        "loaded {} in {:.1} s",
        args.model.display(),
        start.elapsed().as_secs_f64()
    );

    let texts: Vec<String> = match (&args.prompt, &args.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        (None, None) => unreachable!("clap requires --prompt or --prompts"),
    };
    let mut prompts = Vec::with_capacity(texts.len());
    for (line, text) in texts.iter().enumerate() {
        let (text, add_special) = if args.chat {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system));
            }
            messages.push(ChatMessage::new("user", text));
            (tokenizer.apply_chat_template(&messages, true)?, false)
        } else {
            (text.clone(), true)
        };
        let ids = tokenizer.encode(&text, add_special)?;
        if ids.is_empty() {
            bail!("prompt {} encodes to no tokens", line + 1);
        }
        prompts.push(ids);
    }
    let mut stop = model.config.eos_token_ids.clone();
    stop.extend(
        tokenizer
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t)),
    );
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let start = Instant::now();
    let mut new = Vec::with_capacity(prompts.len());
    for batch in prompts.chunks(GENERATION_BATCH) {
        let batch: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        new.extend(generate_batch(
            &model,
            &batch,
            args.max_new_tokens,
            &stop,
            &sampling,
            &device,
        ));
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    for (text, ids) in texts.iter().zip(&new) {
        let completion = tokenizer.decode(ids, true)?;
        if args.prompts.is_some() {
            let line = serde_json::json!({"prompt": text, "completion": completion});
            writeln!(out, "{line}")?;
        } else if args.chat {
            writeln!(out, "{completion}")?;
        } else {
            writeln!(out, "{text}{completion}")?;
        }
    }
    let generated: usize = new.iter().map(Vec::len).sum();
    eprintln!(
        "{} prompts ({} prompt tokens), {} new tokens in {:.2} s ({:.1} tokens/s)",
        prompts.len(),
        prompts.iter().map(Vec::len).sum::<usize>(),
        generated,
        secs,
        generated as f64 / secs
    );
    Ok(())
}
