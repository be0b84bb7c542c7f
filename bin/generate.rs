//! `generate`: continue a prompt with a GGUF file or a Hugging Face directory, using the KV cache.
//!
//! cargo run --release --bin generate -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --prompt "The capital of France is" --max-new-tokens 16

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use decpo::backend;
use decpo_model::{ChatMessage, SamplingConfig, generate, load_pretrained};

#[derive(Parser, Debug)]
#[command(about = "Generate text with a Llama model (GGUF file or Hugging Face directory)")]
struct Args {
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (the user message with --chat).
    #[arg(long)]
    prompt: String,
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

    let (text, add_special) = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        (tokenizer.apply_chat_template(&messages, true)?, false)
    } else {
        (args.prompt.clone(), true)
    };
    let prompt = tokenizer.encode(&text, add_special)?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
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
    let new = generate(
        &model,
        &prompt,
        args.max_new_tokens,
        &stop,
        &sampling,
        &device,
    );
    let secs = start.elapsed().as_secs_f64();
    let completion = tokenizer.decode(&new, true)?;
    let mut out = std::io::stdout().lock();
    if args.chat {
        writeln!(out, "{completion}")?;
    } else {
        writeln!(out, "{}{completion}", args.prompt)?;
    }
    eprintln!(
        "{} prompt tokens, {} new tokens in {:.2} s ({:.1} tokens/s)",
        prompt.len(),
        new.len(),
        secs,
        new.len() as f64 / secs
    );
    Ok(())
}
