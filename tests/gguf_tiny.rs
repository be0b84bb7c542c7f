//! The GGUF path on a file written here from the tiny fixture: F32 tensors, llama.cpp's Q/K row
//! order and metadata names, a minimal BPE vocabulary. It must give the model the Hugging Face path
//! gives, and an unknown quantisation type must be an error naming the tensor.

mod common;

use common::gguf::*;
use common::*;
use decpo_model::weights::gguf::GgufFile;
use decpo_model::weights::safetensors::HfDirSource;
use decpo_model::{LlamaConfig, load_pretrained};

#[test]
fn gguf_f32_with_llama_cpp_row_order_equals_the_hf_directory() {
    let golden = read_json("tiny-llama-golden.json");
    // GGUF has no llama3 RoPE-scaling metadata; compare against the HF weights without it.
    let mut config = LlamaConfig::from_hf_file(&fixture("tiny-llama/config.json")).unwrap();
    config.rope_scaling = None;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_as_gguf(&config, None)).unwrap();

    let from_gguf = load_pretrained::<B>(&path, &Default::default()).unwrap();
    let gguf_config = &from_gguf.model.config;
    assert_eq!(gguf_config.head_dim, 10);
    assert!(!gguf_config.tie_word_embeddings);
    let source = HfDirSource::open(&fixture("tiny-llama")).unwrap();
    let from_hf =
        decpo_model::weights::load_llama::<B>(&source, &config, &Default::default()).unwrap();

    let ids = int_matrix::<B>(&golden["input_ids"]);
    let mask = int_matrix::<B>(&golden["attention_mask"]);
    let a = from_gguf
        .model
        .forward(ids.clone(), mask.clone(), &[])
        .hidden;
    let b = from_hf.forward(ids, mask, &[]).hidden;
    assert_eq!(
        to_vec(a),
        to_vec(b),
        "GGUF and HF paths must give identical hidden states"
    );
}

#[test]
fn unknown_quantisation_type_names_the_tensor() {
    let config = LlamaConfig::from_hf_file(&fixture("tiny-llama/config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q5k.gguf");
    std::fs::write(&path, tiny_as_gguf(&config, Some("blk.2.ffn_down.weight"))).unwrap();
    let err = match load_pretrained::<B>(&path, &Default::default()) {
        Ok(_) => panic!("loaded a tensor of unknown type"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("q5k.gguf")
            && err.contains("`blk.2.ffn_down.weight` has unsupported type Q5_K"),
        "{err}"
    );
}

/// A tensor whose dimensions multiply past 2^64 (found by cargo-fuzz: the element count
/// overflowed when the tensor was read) is refused when the file is opened.
#[test]
fn a_tensor_shape_whose_element_count_overflows_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.gguf");
    let tensors = [(
        "token_embd.weight".to_string(),
        vec![1 << 33, 1 << 33],
        0,
        vec![0u8; 32],
    )];
    std::fs::write(&path, write_gguf(&[], &tensors)).unwrap();
    let err = match GgufFile::open(&path) {
        Ok(_) => panic!("opened a tensor of 2^66 elements"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("huge.gguf")
            && err
                .contains("`token_embd.weight` has shape [8589934592, 8589934592]: more elements"),
        "{err}"
    );
}
