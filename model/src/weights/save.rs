//! Export as a Hugging Face directory that transformers loads: config.json, model.safetensors (f32),
//! and the tokenizer files. Written into a temporary sibling directory and renamed into place, so a
//! crash never leaves a half-written model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, backend::Backend};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::transpose;
use crate::error::{ModelError, Result, io_err};
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::names::{
    EMBED_TOKENS, INPUT_LAYERNORM, LM_HEAD, NORM, POST_ATTENTION_LAYERNORM, PROJECTIONS,
    norm_weight,
};
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
fn projection<B: Backend>(name: String, w: Tensor<B, 2>) -> Named {
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
        EMBED_TOKENS.0.into(),
        model.embed_tokens.weight.val(),
    )];
    for (i, layer) in model.layers.iter().enumerate() {
        for (norm, name) in [
            (&layer.input_layernorm, INPUT_LAYERNORM.0),
            (&layer.post_attention_layernorm, POST_ATTENTION_LAYERNORM.0),
        ] {
            out.push(plain(norm_weight(i, name), norm.gamma.val()));
        }
        for (p, (_, proj)) in PROJECTIONS.iter().zip(layer.projections()) {
            out.push(projection(p.weight(i), proj.merged_weight()));
        }
    }
    out.push(plain(NORM.0.into(), model.norm.gamma.val()));
    if let Some(head) = &model.lm_head {
        out.push(projection(LM_HEAD.0.into(), head.weight.val()));
    }
    out
}

/// Saves `model` (and `tokenizer`, if given) as a Hugging Face directory at `dir`, replacing it.
/// LoRA adapters, if any, are merged into the saved weights.
pub fn save_hf_dir<B: Backend>(
    model: &Llama<B>,
    tokenizer: Option<&LlamaTokenizer>,
    dir: &Path,
) -> Result<()> {
    write_dir_atomically(dir, |tmp| {
        let config_path = tmp.join("config.json");
        let text = serde_json::to_string_pretty(&model.config.to_hf_json())
            .expect("JSON values serialise");
        std::fs::write(&config_path, text).map_err(io_err(&config_path))?;
        write_safetensors(&tmp.join("model.safetensors"), &hf_tensors(model))?;
        if let Some(tok) = tokenizer {
            tok.save_hf(tmp, model.config.max_position_embeddings)?;
        }
        Ok(())
    })
}

/// Saves the LoRA adapters alone in PEFT's layout (`adapter_model.safetensors`,
/// `adapter_config.json`), replacing `dir`. `base` names the base model in the config.
pub fn save_lora_adapters<B: Backend>(
    model: &Llama<B>,
    lora: &LoraConfig,
    base: &str,
    dir: &Path,
) -> Result<()> {
    let mut tensors = Vec::new();
    for (i, layer) in model.layers.iter().enumerate() {
        for (name, (_, proj)) in PROJECTIONS.iter().zip(layer.projections()) {
            let Some(a) = &proj.lora else { continue };
            let p = format!("base_model.model.{}", name.module(i));
            // burn keeps A as [d_in, r] and B as [r, d_out]; PEFT as [r, d_in] and [d_out, r].
            tensors.push(projection(format!("{p}.lora_A.weight"), a.lora_a.val()));
            tensors.push(projection(format!("{p}.lora_B.weight"), a.lora_b.val()));
        }
    }
    let n = model.config.num_hidden_layers;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets,
        "layers_to_transform": lora.layers(n).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
    });
    write_dir_atomically(dir, |tmp| {
        let path = tmp.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        std::fs::write(&path, text).map_err(io_err(&path))?;
        write_safetensors(&tmp.join("adapter_model.safetensors"), &tensors)
    })
}

fn write_safetensors(path: &Path, tensors: &[Named]) -> Result<()> {
    // A failed write (a full disk) is an I/O error on `path`, not a corrupt file.
    let err = |e: safetensors::SafeTensorError| match e {
        safetensors::SafeTensorError::IoError(cause) => ModelError::Io {
            path: path.into(),
            cause,
        },
        e => ModelError::Corrupt {
            path: path.into(),
            message: e.to_string(),
        },
    };
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(err)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(err)
}

/// Fills a temporary sibling of `dir` with `fill`, then renames it into place (replacing `dir`),
/// so a crash never leaves a half-written directory.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
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
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))
}

/// Writes `contents` to a temporary file beside `path`, syncs it and renames it into place, so a
/// crash or a full disk never leaves a half-written `path` (the old file stays until the rename).
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut builder = tempfile::Builder::new();
    // A plain file's permissions (tempfile's own default is owner-only).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(parent)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        write_file_atomically(&path, b"old").unwrap();
        write_file_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.toml"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        // A write that cannot happen (the target is a directory) keeps what was there.
        let err = write_file_atomically(path.parent().unwrap(), b"x");
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_safetensors_file_that_cannot_be_written_is_an_io_error_not_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/model.safetensors");
        let tensors = vec![("w".to_string(), vec![1], 1f32.to_le_bytes().to_vec())];
        let err = write_safetensors(&path, &tensors).unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
        let said = err.to_string();
        assert!(said.contains("missing-dir/model.safetensors"), "{said}");
        assert!(!said.contains("corrupt"), "{said}");
    }
}
