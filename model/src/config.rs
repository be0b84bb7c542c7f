//! `LlamaConfig`: the architecture, read from a Hugging Face `config.json` or a preset.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result, io_err};

/// Llama 3.1/3.2 frequency-dependent RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Divisor applied to the low frequencies.
    pub factor: f64,
    /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Architecture of a Llama-family decoder, with Hugging Face field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP (`up_proj` output, d_ff).
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Optional Llama 3 RoPE scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest sequence the model supports.
    pub max_position_embeddings: usize,
    /// Whether the unembedding reuses `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (Llama 3 instruct models have several).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
}

/// `config.json` as Hugging Face writes it: transformers 4 (`rope_theta` + `rope_scaling`) and
/// transformers 5 (`rope_parameters`) layouts, scalar or list `eos_token_id`.
#[derive(Deserialize)]
struct HfConfigFile {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let file: HfConfigFile = serde_json::from_str(&text).map_err(|cause| ModelError::Json {
            path: path.into(),
            cause,
        })?;
        Self::from_hf(file, &path.display().to_string())
    }

    /// Parses the text of a Hugging Face `config.json`; `origin` names it in errors.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self> {
        let file: HfConfigFile = serde_json::from_str(text).map_err(|e| ModelError::Config {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        Self::from_hf(file, origin)
    }

    fn from_hf(f: HfConfigFile, origin: &str) -> Result<Self> {
        let bad = |message: String| ModelError::Config {
            origin: origin.into(),
            message,
        };
        if let Some(t) = f.model_type.as_deref()
            && !matches!(t, "llama" | "mistral")
        {
            return Err(bad(format!("model_type `{t}` is not a Llama model")));
        }
        if f.attention_bias || f.mlp_bias {
            return Err(bad("attention_bias/mlp_bias = true is not supported".into()));
        }
        if let Some(act) = f.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(bad(format!(
                "hidden_act `{act}` is not supported (only silu)"
            )));
        }
        // transformers 5 moved rope_theta and rope_scaling into rope_parameters.
        let rope = f.rope_parameters.or(f.rope_scaling);
        let rope_theta = f
            .rope_theta
            .or_else(|| rope.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => None,
            Some(v) => parse_rope_scaling(&v).map_err(bad)?,
        };
        let heads = f.num_attention_heads;
        let config = Self {
            vocab_size: f.vocab_size,
            hidden_size: f.hidden_size,
            intermediate_size: f.intermediate_size,
            num_hidden_layers: f.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: f.num_key_value_heads.unwrap_or(heads),
            head_dim: f
                .head_dim
                .unwrap_or(f.hidden_size.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: f.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.max_position_embeddings,
            tie_word_embeddings: f.tie_word_embeddings,
            bos_token_id: f.bos_token_id,
            eos_token_ids: match f.eos_token_id {
                None => vec![],
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            pad_token_id: f.pad_token_id,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// The `config.json` transformers reads back (transformers 4 layout, which 5 also accepts).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => serde_json::Value::Null,
            [one] => (*one).into(),
            many => many.into(),
        };
        let rope_scaling = self.rope_scaling.map(|s| {
            serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })
        });
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        })
    }

    /// Checks that the sizes fit together; the message names the bad value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(format!(
                "rms_norm_eps ({}) must be positive",
                self.rms_norm_eps
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        let ids = self
            .bos_token_id
            .iter()
            .chain(&self.eos_token_ids)
            .chain(&self.pad_token_id);
        if let Some(id) = ids.into_iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(format!(
                "special token id {id} is outside the vocabulary ({})",
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = d * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads);
        let layer = attn + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_hidden_layers * layer + d + head
    }

    /// A tiny config for tests and the CPU demo: GQA, untied head.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 176,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: Some(0),
        }
    }

    /// SmolLM2-135M(-Instruct).
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: Some(2),
        }
    }

    /// Llama-3.2-1B.
    pub fn llama32_1b() -> Self {
        Self {
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            max_position_embeddings: 131_072,
            tie_word_embeddings: true,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001],
            pad_token_id: None,
        }
    }

    /// Llama-3-8B(-Instruct).
    pub fn llama3_8b() -> Self {
        Self {
            vocab_size: 128_256,
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001, 128_009],
            pad_token_id: None,
        }
    }

    /// Llama-2-7B(-chat).
    pub fn llama2_7b() -> Self {
        Self {
            vocab_size: 32_000,
            hidden_size: 4096,
            intermediate_size: 11_008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
        }
    }

    /// A preset by name: `tiny`, `smollm2-135m`, `llama-3.2-1b`, `llama-3-8b`, `llama-2-7b`.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "tiny" => Self::tiny(),
            "smollm2-135m" => Self::smollm2_135m(),
            "llama-3.2-1b" => Self::llama32_1b(),
            "llama-3-8b" => Self::llama3_8b(),
            "llama-2-7b" => Self::llama2_7b(),
            _ => return None,
        })
    }
}

fn parse_rope_scaling(
    v: &serde_json::Value,
) -> std::result::Result<Option<Llama3RopeScaling>, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let num = |key: &str| {
                v.get(key)
                    .and_then(|x| x.as_f64())
                    .ok_or_else(|| format!("rope scaling `llama3` lacks numeric `{key}`"))
            };
            Ok(Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(format!(
            "rope scaling type `{other}` is not supported (default, llama3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_parameter_counts() {
        // Published sizes: SmolLM2-135M has 134.5M parameters, Llama-3.2-1B 1.24B, Llama-2-7B 6.74B,
        // Llama-3-8B 8.03B.
        let millions = |c: LlamaConfig| c.num_params() as f64 / 1e6;
        assert!((millions(LlamaConfig::smollm2_135m()) - 134.5).abs() < 0.1);
        assert!((millions(LlamaConfig::llama32_1b()) - 1235.8).abs() < 1.0);
        assert!((millions(LlamaConfig::llama2_7b()) - 6738.4).abs() < 1.0);
        assert!((millions(LlamaConfig::llama3_8b()) - 8030.3).abs() < 1.0);
    }

    #[test]
    fn reads_both_transformers_layouts() {
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":12,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-6,
            "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":16},"max_position_embeddings":32,
            "eos_token_id":[1,2]}"#;
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":12,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":16},"max_position_embeddings":32,
            "eos_token_id":[1,2]}"#;
        let a = LlamaConfig::from_hf_json(v4, "v4").unwrap();
        let b = LlamaConfig::from_hf_json(v5, "v5").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.head_dim, 4);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(a.eos_token_ids, vec![1, 2]);
        let back = LlamaConfig::from_hf_json(&a.to_hf_json().to_string(), "round trip").unwrap();
        assert_eq!(a, back);
    }

    #[test]
    fn inconsistent_sizes_name_the_field() {
        let mut c = LlamaConfig::tiny();
        c.num_key_value_heads = 3;
        let msg = c.validate().unwrap_err();
        assert!(msg.contains("num_key_value_heads (3)"), "{msg}");
        let text = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":12,"num_hidden_layers":1,
            "num_attention_heads":2,"rms_norm_eps":1e-6,"max_position_embeddings":32,"bos_token_id":10}"#;
        let err = LlamaConfig::from_hf_json(text, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg.json") && err.contains("special token id 10"),
            "{err}"
        );
    }
}
