//! Shared helpers of the integration tests: fixtures, the real model, tolerances.
#![allow(dead_code)]

pub mod gguf;

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use decpo_alignment::{LossType, ObjectiveConfig, Reduction, RegMode, RegRows, Regularizer, Site};
use serde_json::Value;

/// The test backend: burn-ndarray (one float order: the deterministic tests), or under a GPU
/// feature the binaries' backend (`decpo::backend`): `--features wgpu` runs the same tests through
/// the GPU code path (CI does so on Mesa's llvmpipe for the fixture tests). The default CPU build
/// of the binaries uses burn-flex; tests/backends.rs holds it to ndarray's numbers.
#[cfg(any(feature = "wgpu", feature = "cuda-fixed"))]
pub type B = decpo::backend::Backend;
#[cfg(not(any(feature = "wgpu", feature = "cuda-fixed")))]
pub type B = burn::backend::NdArray<f32>;
pub type AD = burn::backend::Autodiff<B>;

/// How far two computations that are the same in exact arithmetic may differ on the test
/// backend: 0 on burn-ndarray (one float order), a few f32 ulps of O(1) logits on wgpu, where
/// fusion compiles a different graph into differently ordered kernels.
pub const FLOAT_ORDER: f32 = if cfg!(feature = "wgpu") { 1e-5 } else { 0.0 };

/// The repository root: where the tests were built, or `DECPO_REPO_ROOT` for a test binary
/// copied to another machine (the GPU checks).
pub fn root() -> PathBuf {
    std::env::var_os("DECPO_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn read_json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The SmolLM2-135M-Instruct GGUF that `scripts/fetch-models.sh` downloads. Missing is a failure,
/// not a skip: CI fetches it before testing.
pub fn smollm2_path() -> PathBuf {
    let path = std::env::var_os("DECPO_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh (or set DECPO_SMOLLM2_GGUF)",
        path.display()
    );
    path
}

pub fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("expected numbers, got {other}"),
    }
}

pub fn ints(v: &Value) -> Vec<i64> {
    match v {
        Value::Array(items) => items.iter().flat_map(ints).collect(),
        Value::Number(n) => vec![n.as_i64().expect("integer")],
        other => panic!("expected integers, got {other}"),
    }
}

pub fn int_matrix<Bk: burn::tensor::backend::Backend>(v: &Value) -> Tensor<Bk, 2, Int> {
    let rows = v.as_array().expect("rows").len();
    let data = ints(v);
    let cols = data.len() / rows;
    Tensor::from_data(TensorData::new(data, [rows, cols]), &Default::default())
}

/// The preference batch of scripts/make_loss_fixture.py (`golden["batch"]`); its `eos_mask` is
/// empty (the token ids are random, no row ends in a marked EOS).
pub fn fixture_batch<Bk: burn::tensor::backend::Backend>(
    golden: &Value,
) -> decpo_model::CompletionBatch<Bk> {
    let b = &golden["batch"];
    let attention_mask = int_matrix::<Bk>(&b["attention_mask"]);
    decpo_model::CompletionBatch {
        input_ids: int_matrix::<Bk>(&b["input_ids"]),
        eos_mask: attention_mask.zeros_like(),
        attention_mask,
        completion_mask: int_matrix::<Bk>(&b["completion_mask"]),
    }
}

/// max |got - want| / max |want|: relative error at the scale of the tensor.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want
        .iter()
        .fold(0f32, |m, w| m.max(w.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    diff / scale
}

/// Elementwise relative error, for values such as log-probs: `|got - want| <= rel * max(|want|, 1)`.
/// The floor of 1 is there because a log-prob near 0 is `logit - logsumexp` of two numbers of
/// magnitude ~10-30, so f32 rounding alone leaves ~1e-6 absolute error on it.
pub fn assert_close_each(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

pub fn to_vec<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32")
}

/// The objective of a case of decpo-loss-golden.json (scripts/make_loss_fixture.py).
pub fn objective_config(case: &Value) -> ObjectiveConfig {
    let case = &case["settings"];
    let loss = match case["loss"].as_str().unwrap() {
        "sigmoid" => LossType::Sigmoid,
        "ipo" => LossType::Ipo,
        "hinge" => LossType::Hinge,
        "simpo" => LossType::Simpo,
        "sft" => LossType::Sft,
        other => panic!("unknown loss {other}"),
    };
    let reduction = match case["reduction"].as_str().unwrap_or("sum") {
        "sum" => Reduction::Sum,
        _ => Reduction::Mean,
    };
    let reg = &case["regularizer"];
    // The fixture's names: `kind`, and `position` last/mean (the sites `eos` and
    // `completion-mean`; the fixture's batch marks no EOS, so its mean is over every completion
    // token, as PyTorch computed it).
    let regularizer = (!reg.is_null()).then(|| {
        let mode = match reg["kind"].as_str().unwrap() {
            "paper" => RegMode::Paper,
            "released" => RegMode::Released,
            "l1" => RegMode::L1,
            other => panic!("unknown regularizer {other}"),
        };
        Regularizer {
            lambda: reg["lambda"].as_f64().unwrap(),
            rows: match reg["rows"].as_str() {
                Some("chosen") => RegRows::Chosen,
                _ => RegRows::All,
            },
            site: match reg["position"].as_str() {
                Some("mean") => Site::CompletionMean,
                _ => Site::Eos,
            },
            normalize: reg["normalize"].as_bool().unwrap_or(true),
            ..Regularizer::new(mode, reg["layer"].as_u64().unwrap() as usize)
        }
    });
    ObjectiveConfig {
        loss,
        reduction,
        beta: case["beta"].as_f64().unwrap(),
        label_smoothing: case["label_smoothing"].as_f64().unwrap_or(0.0),
        simpo_gamma: case["simpo_gamma"].as_f64().unwrap_or(0.2),
        regularizer,
    }
}

/// A short training run on [`sorting_pairs`]`(48, _)`: 6 optimizer steps of 2 micro-batches of 4
/// pairs, warmup 2 then cosine, a checkpoint every 2 steps.
pub fn short_run() -> decpo_alignment::train::session::TrainSettings {
    decpo_alignment::train::session::TrainSettings {
        learning_rate: 2e-3,
        warmup_steps: 2,
        decay: decpo_alignment::train::schedule::Decay::Cosine,
        epochs: 1,
        max_steps: Some(6),
        micro_batch: 4,
        accumulation: 2,
        save_every: 2,
        keep_last: 2,
        seed: 7,
        ..Default::default()
    }
}

/// The embedded default job's small Llama (datasets/default/config.json).
pub fn sorting_config() -> decpo_model::LlamaConfig {
    let path = root().join("datasets/default/config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decpo_model::LlamaConfig::from_hf_json(&text, "config.json").unwrap()
}

/// The first `n_train` pairs of the embedded default job for training and the next `n_eval` for
/// evaluation, tokenized (prompts ≤ 16 tokens, pairs ≤ 32).
pub fn sorting_pairs(
    n_train: usize,
    n_eval: usize,
) -> (
    decpo_alignment::train::data::PairSet,
    decpo_alignment::train::data::PairSet,
) {
    use decpo_datasets::{Task, TokenizeConfig, load_pairs, tokenize_pairs};
    let dir = root().join("datasets/default");
    let tok = decpo_model::LlamaTokenizer::from_hf_dir(&dir).unwrap();
    let loaded = load_pairs(
        &dir.join("pairs.jsonl"),
        &Task::from_name("trl").unwrap(),
        false,
    )
    .unwrap();
    let config = TokenizeConfig {
        max_prompt_length: 16,
        max_length: 32,
        eos_id: tok.token_to_id("</s>").unwrap(),
        template: decpo_datasets::Template::Raw,
    };
    let (pairs, _) = tokenize_pairs(&tok, &loaded.pairs, &config, |_| {}).unwrap();
    let set = |p: &[decpo_datasets::TokenizedPair]| decpo_alignment::train::data::PairSet {
        pairs: p.to_vec(),
        ids: decpo_datasets::BatchIds {
            pad: 0,
            eos: config.eos_id,
        },
        reference: None,
    };
    (
        set(&pairs[..n_train]),
        set(&pairs[n_train..n_train + n_eval]),
    )
}

/// Every parameter's values as f32, in visiting order.
pub fn weights<Bk: burn::tensor::backend::Backend>(m: &decpo_model::Llama<Bk>) -> Vec<Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct Collect(Vec<Vec<f32>>);
    impl<Bk: burn::tensor::backend::Backend> ModuleVisitor<Bk> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
            let data = p.val().into_data().convert::<f32>();
            self.0.push(data.to_vec::<f32>().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

pub fn bits(w: &[Vec<f32>]) -> Vec<Vec<u32>> {
    w.iter()
        .map(|t| t.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// Runs the binary `bin` with `args` in `dir` and returns its output; a failure names the
/// command and shows its stderr.
pub fn run_ok(bin: &str, args: &[&str], dir: &std::path::Path) -> std::process::Output {
    let out = std::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
