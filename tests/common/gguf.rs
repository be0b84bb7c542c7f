//! A GGUF v3 writer for the tests, and the tiny fixture written as GGUF the way llama.cpp lays
//! it out (its Q/K row order and metadata names, F32 tensors, a minimal BPE vocabulary).

use decpo_model::LlamaConfig;
use decpo_model::weights::TensorSource;
use decpo_model::weights::safetensors::HfDirSource;

use super::fixture;

pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Writes GGUF v3: `tensors` are (gguf name, shape outermost first, type code, bytes).
pub fn write_gguf(
    meta: &[(&str, Meta)],
    tensors: &[(String, Vec<usize>, u32, Vec<u8>)],
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(*v as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| put_str(&mut out, s));
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, ty, data) in tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        shape
            .iter()
            .rev()
            .for_each(|d| out.extend((*d as u64).to_le_bytes()));
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for (_, _, _, data) in tensors {
        out.extend(data);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    out
}

/// llama.cpp's permutation of Q/K rows: within a head, HF row `j * hd/2 + i` goes to `2i + j`.
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let from = (h * hd + j * hd / 2 + i) * cols;
                let to = (h * hd + 2 * i + j) * cols;
                out[to..to + cols].copy_from_slice(&data[from..from + cols]);
            }
        }
    }
    out
}

/// The tiny fixture as a GGUF file's bytes; `unknown_type_for` names a tensor written with an
/// unknown type code (13).
pub fn tiny_as_gguf(config: &LlamaConfig, unknown_type_for: Option<&str>) -> Vec<u8> {
    let source = HfDirSource::open(&fixture("tiny-llama")).unwrap();
    let mut tensors = Vec::new();
    for hf in source.names() {
        let t = source.read(&hf).unwrap();
        let gguf = if hf == "model.embed_tokens.weight" {
            "token_embd.weight".to_string()
        } else if hf == "model.norm.weight" {
            "output_norm.weight".to_string()
        } else if hf == "lm_head.weight" {
            "output.weight".to_string()
        } else {
            let rest = hf.strip_prefix("model.layers.").unwrap();
            let (layer, part) = rest.split_once('.').unwrap();
            let part = match part {
                "self_attn.q_proj.weight" => "attn_q",
                "self_attn.k_proj.weight" => "attn_k",
                "self_attn.v_proj.weight" => "attn_v",
                "self_attn.o_proj.weight" => "attn_output",
                "mlp.gate_proj.weight" => "ffn_gate",
                "mlp.up_proj.weight" => "ffn_up",
                "mlp.down_proj.weight" => "ffn_down",
                "input_layernorm.weight" => "attn_norm",
                "post_attention_layernorm.weight" => "ffn_norm",
                other => panic!("unexpected {other}"),
            };
            format!("blk.{layer}.{part}.weight")
        };
        let data = if gguf.ends_with("attn_q.weight") {
            permute_rows(&t.data, t.shape[0], t.shape[1], config.num_attention_heads)
        } else if gguf.ends_with("attn_k.weight") {
            permute_rows(&t.data, t.shape[0], t.shape[1], config.num_key_value_heads)
        } else {
            t.data
        };
        let ty = if unknown_type_for == Some(gguf.as_str()) {
            13
        } else {
            0
        };
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((gguf, t.shape, ty, bytes));
    }
    let c = config;
    let tokens: Vec<String> = (0..c.vocab_size).map(|i| format!("t{i}")).collect();
    let meta = [
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.block_count", Meta::U32(c.num_hidden_layers as u32)),
        (
            "llama.context_length",
            Meta::U32(c.max_position_embeddings as u32),
        ),
        ("llama.embedding_length", Meta::U32(c.hidden_size as u32)),
        (
            "llama.feed_forward_length",
            Meta::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count",
            Meta::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            Meta::U32(c.num_key_value_heads as u32),
        ),
        ("llama.attention.key_length", Meta::U32(c.head_dim as u32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", Meta::F32(c.rope_theta as f32)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        (
            "tokenizer.ggml.token_type",
            Meta::I32s(vec![1; c.vocab_size]),
        ),
        ("tokenizer.ggml.merges", Meta::Strs(vec![])),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(false)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
    ];
    write_gguf(&meta, &tensors)
}
