//! Weights in and out: Hugging Face directories (safetensors) and GGUF files.
//!
//! A [`TensorSource`] serves tensors by their Hugging Face name as f32 in Hugging Face layout
//! (`[out, in]` for projections); [`load_llama`] builds the model from one, checking that every
//! parameter is found with the right shape and that every tensor of the file is used.

pub mod dequant;
pub mod gguf;
pub mod safetensors;
pub mod save;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::attention::LlamaAttention;
use crate::config::LlamaConfig;
use crate::decoder::LlamaDecoderLayer;
use crate::error::{ModelError, Result};
use crate::linear::Projection;
use crate::llama::Llama;
use crate::mlp::LlamaMlp;
use crate::names::{
    EMBED_TOKENS, INPUT_LAYERNORM, LM_HEAD, NORM, POST_ATTENTION_LAYERNORM, PROJECTIONS,
    norm_weight,
};
use crate::tokenizer::LlamaTokenizer;

/// A host-side f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A file of named tensors.
pub trait TensorSource {
    /// The file, for error messages.
    fn path(&self) -> &Path;
    /// Every tensor name, in Hugging Face naming.
    fn names(&self) -> Vec<String>;
    /// One tensor as f32 in Hugging Face layout.
    fn read(&self, name: &str) -> Result<HostTensor>;
}

/// A model with its tokenizer, as loaded from a GGUF file or a Hugging Face directory.
pub struct Pretrained<B: Backend> {
    pub model: Llama<B>,
    /// `None` for a Hugging Face directory without `tokenizer.json`.
    pub tokenizer: Option<LlamaTokenizer>,
}

/// Loads a `.gguf` file or a Hugging Face directory (config.json + safetensors).
pub fn load_pretrained<B: Backend>(path: &Path, device: &B::Device) -> Result<Pretrained<B>> {
    if path.is_dir() {
        let source = safetensors::HfDirSource::open(path)?;
        let config = LlamaConfig::from_hf_file(&path.join("config.json"))?;
        let model = load_llama(&source, &config, device)?;
        let tokenizer = if path.join("tokenizer.json").exists() {
            Some(LlamaTokenizer::from_hf_dir(path)?)
        } else {
            None
        };
        Ok(Pretrained { model, tokenizer })
    } else {
        let file = gguf::GgufFile::open(path)?;
        let config = file.llama_config()?;
        let tokenizer = LlamaTokenizer::from_gguf(&file)?;
        let source = gguf::GgufSource::new(file, &config)?;
        let model = load_llama(&source, &config, device)?;
        Ok(Pretrained {
            model,
            tokenizer: Some(tokenizer),
        })
    }
}

/// Builds a [`Llama`] from `source`, loudly: a missing tensor, a wrong shape or an unused tensor is
/// an error naming it.
pub fn load_llama<B: Backend>(
    source: &dyn TensorSource,
    config: &LlamaConfig,
    device: &B::Device,
) -> Result<Llama<B>> {
    let c = config;
    let mut loader = Loader {
        source,
        device,
        unused: source.names().into_iter().collect(),
    };
    // transformers keeps the RoPE table in some older checkpoints; it is derived, not learned.
    loader
        .unused
        .retain(|n| !n.ends_with("rotary_emb.inv_freq"));
    let embed_tokens = Embedding {
        weight: loader.param(EMBED_TOKENS.0, [c.vocab_size, c.hidden_size])?,
    };
    let layers = (0..c.num_hidden_layers)
        .map(|i| loader.layer(i, c))
        .collect::<Result<Vec<_>>>()?;
    let norm = loader.norm(NORM.0, c)?;
    let lm_head = if c.tie_word_embeddings {
        // Tied checkpoints sometimes still carry a copy of the embedding as lm_head.
        loader.unused.remove(LM_HEAD.0);
        None
    } else {
        Some(loader.linear(LM_HEAD.0, c.hidden_size, c.vocab_size)?)
    };
    if !loader.unused.is_empty() {
        let names: Vec<_> = loader.unused.iter().take(8).cloned().collect();
        let more = loader.unused.len().saturating_sub(names.len());
        let suffix = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return Err(ModelError::UnexpectedTensors {
            path: source.path().into(),
            names: format!("{}{suffix}", names.join(", ")),
        });
    }
    Ok(Llama::from_parts(
        c.clone(),
        embed_tokens,
        layers,
        norm,
        lm_head,
    ))
}

/// The transpose of a row-major `[rows, cols]` matrix: PyTorch keeps projections `[out, in]`,
/// burn `[in, out]`.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

struct Loader<'a, B: Backend> {
    source: &'a dyn TensorSource,
    device: &'a B::Device,
    unused: BTreeSet<String>,
}

impl<B: Backend> Loader<'_, B> {
    /// Decoder layer `i`: its two norms and seven projections.
    fn layer(&mut self, i: usize, c: &LlamaConfig) -> Result<LlamaDecoderLayer<B>> {
        let (q_out, kv_out) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let (hidden, ff) = (c.hidden_size, c.intermediate_size);
        // [d_in, d_out] of each projection, in the order of `PROJECTIONS`.
        let shapes = [
            (hidden, q_out),
            (hidden, kv_out),
            (hidden, kv_out),
            (q_out, hidden),
            (hidden, ff),
            (hidden, ff),
            (ff, hidden),
        ];
        let mut loaded = Vec::with_capacity(PROJECTIONS.len());
        for (p, (d_in, d_out)) in PROJECTIONS.iter().zip(shapes) {
            loaded.push(self.projection(&p.weight(i), d_in, d_out)?);
        }
        let [
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            gate_proj,
            up_proj,
            down_proj,
        ]: [Projection<B>; 7] = loaded.try_into().expect("one per name");
        Ok(LlamaDecoderLayer {
            input_layernorm: self.norm(&norm_weight(i, INPUT_LAYERNORM.0), c)?,
            self_attn: LlamaAttention {
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
            post_attention_layernorm: self.norm(&norm_weight(i, POST_ATTENTION_LAYERNORM.0), c)?,
            mlp: LlamaMlp {
                gate_proj,
                up_proj,
                down_proj,
            },
        })
    }

    fn take<const D: usize>(&mut self, name: &str, expected: [usize; D]) -> Result<HostTensor> {
        if !self.unused.remove(name) {
            return Err(ModelError::MissingTensor {
                path: self.source.path().into(),
                name: name.into(),
            });
        }
        let t = self.source.read(name)?;
        if t.shape != expected {
            return Err(ModelError::Shape {
                path: PathBuf::from(self.source.path()),
                name: name.into(),
                got: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }

    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<B, D>>> {
        let t = self.take(name, shape)?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(t.data, shape),
            self.device,
        )))
    }

    /// A projection stored `[d_out, d_in]` (PyTorch) becomes burn's `[d_in, d_out]`.
    fn projection(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Projection<B>> {
        self.linear(name, d_in, d_out).map(Projection::new)
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        let t = self.take(name, [d_out, d_in])?;
        let data = transpose(&t.data, d_out, d_in);
        let weight = Tensor::from_data(TensorData::new(data, [d_in, d_out]), self.device);
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        })
    }

    fn norm(&mut self, name: &str, c: &LlamaConfig) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            gamma: self.param(name, [c.hidden_size])?,
            epsilon: c.rms_norm_eps,
        })
    }
}

/// Loads only the tokenizer of a `.gguf` file (from its metadata) or a Hugging Face directory.
pub fn load_tokenizer(path: &Path) -> Result<LlamaTokenizer> {
    if path.is_dir() {
        LlamaTokenizer::from_hf_dir(path)
    } else {
        LlamaTokenizer::from_gguf(&gguf::GgufFile::open(path)?)
    }
}
