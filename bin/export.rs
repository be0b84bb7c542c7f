//! `export`: convert a GGUF file (or re-save a Hugging Face directory) as a Hugging Face
//! directory that transformers loads (f32 safetensors, config.json, tokenizer files).
//!
//! cargo run --release --bin export -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out out/smollm2-hf

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use decpo::backend;
use decpo_model::{load_pretrained, save_hf_dir};

#[derive(Parser, Debug)]
#[command(about = "Save a Llama model as a Hugging Face directory")]
struct Args {
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = backend::device();
    let pretrained = load_pretrained::<backend::Backend>(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    save_hf_dir(&pretrained.model, pretrained.tokenizer.as_ref(), &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
