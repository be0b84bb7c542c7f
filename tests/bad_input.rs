//! Bad weights and configs give one clear error naming the file and tensor, never a panic.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use decpo_model::load_pretrained;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn load_err(path: &Path) -> String {
    match load_pretrained::<B>(path, &Default::default()) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of the tiny fixture with its tensors passed through `edit`.
fn tiny_copy(edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &dir.path().join("model.safetensors"))
        .unwrap();
    dir
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named() {
    let dir = tiny_copy(|t| t.retain(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight"));
    let err = load_err(dir.path());
    assert!(
        err.contains("`model.layers.1.mlp.up_proj.weight` is missing"),
        "{err}"
    );

    let dir = tiny_copy(|t| t.push(("model.layers.9.extra.weight".into(), vec![2], vec![0; 8])));
    let err = load_err(dir.path());
    assert!(
        err.contains("not used by the model: model.layers.9.extra.weight"),
        "{err}"
    );

    let dir = tiny_copy(|t| {
        let norm = t
            .iter_mut()
            .find(|(n, _, _)| n == "model.norm.weight")
            .unwrap();
        norm.1 = vec![norm.1[0] / 2, 2];
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("`model.norm.weight` has shape [24, 2], expected [48]"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_and_inconsistent_config_are_errors() {
    let dir = tiny_copy(|_| {});
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("corrupt or truncated"),
        "{err}"
    );

    let dir = tiny_copy(|_| {});
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["num_key_value_heads"] = 4.into();
    std::fs::write(&config, json.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("num_key_value_heads (4)"),
        "{err}"
    );
}

#[test]
fn truncated_gguf_names_the_file_and_the_tensor() {
    let real = std::fs::read(smollm2_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    // Metadata and tensor directory intact, tensor data cut off.
    std::fs::write(&path, &real[..real.len() / 2]).unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("cut.gguf") && err.contains("runs past the end of the file"),
        "{err}"
    );
    // Cut inside the metadata.
    std::fs::write(&path, &real[..5000]).unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("cut.gguf")
            && err.contains("tokenizer.ggml.tokens = 49152 is larger than the rest"),
        "{err}"
    );
    // Cut inside the header.
    std::fs::write(&path, &real[..12]).unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("cut.gguf") && err.contains("file ends inside the tensor count"),
        "{err}"
    );
}
