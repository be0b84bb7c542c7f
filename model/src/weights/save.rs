//! Export as a Hugging Face directory that transformers loads: config.json, model.safetensors (f32),
//! and the tokenizer files. Written into a temporary sibling directory and renamed into place, so a
//! crash never leaves a half-written model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::tensor::{Tensor, backend::Backend};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::transpose;
use crate::error::{ModelError, Result, io_err};
use crate::llama::Llama;
use crate::tokenizer::LlamaTokenizer;

/// (name, shape, little-endian f32 bytes) in Hugging Face layout.
type Named = (String, Vec<usize>, Vec<u8>);

fn bytes_of(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn plain<B: Backend, const D: usize>(name: String, t: Tensor<B, D>) -> Named {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 after convert");
    (name, shape, bytes_of(&values))
}

/// burn keeps projections as `[in, out]`; PyTorch as `[out, in]`.
fn projection<B: Backend>(name: String, l: &Linear<B>) -> Named {
    let w = l.weight.val();
    let [d_in, d_out] = w.dims();
    let values = w
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 after convert");
    (
        name,
        vec![d_out, d_in],
        bytes_of(&transpose(&values, d_in, d_out)),
    )
}

/// The model's tensors under Hugging Face names.
fn hf_tensors<B: Backend>(model: &Llama<B>) -> Vec<Named> {
    let mut out = vec![plain(
        "model.embed_tokens.weight".into(),
        model.embed_tokens.weight.val(),
    )];
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        let m = &layer.mlp;
        out.push(plain(
            format!("{p}.input_layernorm.weight"),
            layer.input_layernorm.gamma.val(),
        ));
        out.push(projection(
            format!("{p}.self_attn.q_proj.weight"),
            &a.q_proj,
        ));
        out.push(projection(
            format!("{p}.self_attn.k_proj.weight"),
            &a.k_proj,
        ));
        out.push(projection(
            format!("{p}.self_attn.v_proj.weight"),
            &a.v_proj,
        ));
        out.push(projection(
            format!("{p}.self_attn.o_proj.weight"),
            &a.o_proj,
        ));
        out.push(plain(
            format!("{p}.post_attention_layernorm.weight"),
            layer.post_attention_layernorm.gamma.val(),
        ));
        out.push(projection(
            format!("{p}.mlp.gate_proj.weight"),
            &m.gate_proj,
        ));
        out.push(projection(format!("{p}.mlp.up_proj.weight"), &m.up_proj));
        out.push(projection(
            format!("{p}.mlp.down_proj.weight"),
            &m.down_proj,
        ));
    }
    out.push(plain("model.norm.weight".into(), model.norm.gamma.val()));
    if let Some(head) = &model.lm_head {
        out.push(projection("lm_head.weight".into(), head));
    }
    out
}

/// Saves `model` (and `tokenizer`, if given) as a Hugging Face directory at `dir`, replacing it.
pub fn save_hf_dir<B: Backend>(
    model: &Llama<B>,
    tokenizer: Option<&LlamaTokenizer>,
    dir: &Path,
) -> Result<()> {
    let name = dir.file_name().ok_or_else(|| ModelError::Io {
        path: dir.into(),
        cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory name"),
    })?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;

    let config = &model.config;
    let config_path = tmp.join("config.json");
    let text = serde_json::to_string_pretty(&config.to_hf_json()).expect("JSON values serialise");
    std::fs::write(&config_path, text).map_err(io_err(&config_path))?;

    let tensors = hf_tensors(model);
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Corrupt {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
    let weights = tmp.join("model.safetensors");
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &weights).map_err(|e| {
        ModelError::Corrupt {
            path: weights.clone(),
            message: e.to_string(),
        }
    })?;
    if let Some(tok) = tokenizer {
        tok.save_hf(&tmp, config.max_position_embeddings)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))
}
