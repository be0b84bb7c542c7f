//! A Llama-family decoder written once over any burn backend, with Hugging Face names for its
//! parts, weights from Hugging Face directories and GGUF files, tokenizers with chat templates,
//! completion log-probs for preference optimisation, and KV-cache generation.

pub mod attention;
pub mod cache;
pub mod config;
pub mod decoder;
pub mod error;
pub mod fused;
pub mod generate;
pub mod linear;
pub mod llama;
pub mod logprobs;
pub mod lora;
pub mod mlp;
pub mod names;
pub mod precision;
pub mod rope;
pub mod shared_prompt;
pub mod tokenizer;
pub mod weights;

pub use config::{Llama3RopeScaling, LlamaConfig};
pub use error::{ModelError, Result};
pub use generate::{GENERATION_BATCH, SamplingConfig, generate, generate_batch, prefill};
pub use linear::Projection;
pub use llama::{Llama, LlamaOutput};
pub use logprobs::{CompletionBatch, SequenceLogps, completion_logps};
pub use lora::LoraConfig;
pub use precision::{Precision, set_compute_dtype};
pub use shared_prompt::SharedPrompts;
pub use tokenizer::{ChatMessage, LlamaTokenizer};
pub use weights::save::{save_hf_dir, save_lora_adapters, write_dir_atomically};
pub use weights::{Pretrained, load_pretrained, load_tokenizer};

/// burn-ndarray has one random generator per process: the unit tests that seed it and draw
/// from it hold this lock, or a test running beside them could draw from their stream.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
