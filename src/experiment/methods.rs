//! The methods of the paper's Table 2 and one run of each: the objective a method trains with
//! on top of the shared configuration, and training plus evaluation against the base model.

use std::path::Path;

use anyhow::bail;
use decpo_alignment::{LossType, ObjectiveConfig, Regularizer};
use decpo_model::Llama;

use super::eval::{GenerationSettings, MethodResult, evaluate_method};
use crate::backend::{Autodiff, Backend, device};
use crate::run::RunConfig;
use crate::run::job::{self, Launch};

/// The methods of the paper's Table 2.
pub const METHODS: [&str; 5] = ["sft", "dpo", "simpo", "l1", "decpo"];

/// The regularizer weights given for L1-Reg and DecPO (`None`: the SPEC's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodWeights {
    /// DecPO's λ (paper mode).
    pub decpo_lambda: Option<f64>,
    /// L1-Reg's λ₁.
    pub l1_lambda: Option<f64>,
}

/// The objective of `method` on top of the shared one.
pub fn objective(
    method: &str,
    base: &ObjectiveConfig,
    weights: MethodWeights,
    layer: usize,
) -> ObjectiveConfig {
    let with = |loss, regularizer| ObjectiveConfig {
        loss,
        regularizer,
        ..base.clone()
    };
    // L1-Reg and DecPO: the SPEC's defaults at `layer`, with the weights given on the command line.
    let regularized = |kind: &str, lambda: Option<f64>| {
        let mut reg = Regularizer::named(kind, layer)
            .expect("a known regularizer")
            .expect("not none");
        if let Some(l) = lambda {
            reg.set_lambda(l);
        }
        with(LossType::Sigmoid, Some(reg))
    };
    match method {
        "sft" => with(LossType::Sft, None),
        "simpo" => with(LossType::Simpo, None),
        "l1" => regularized("l1", weights.l1_lambda),
        "decpo" => regularized("paper", weights.decpo_lambda),
        _ => with(LossType::Sigmoid, None),
    }
}

/// The methods of a comma-separated list (`--methods`), each one of [`METHODS`].
pub fn parse_methods(list: &str) -> anyhow::Result<Vec<String>> {
    let methods: Vec<String> = list.split(',').map(|m| m.trim().to_string()).collect();
    if let Some(bad) = methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
        bail!(
            "--methods: unknown method `{bad}` (one of {})",
            METHODS.join(", ")
        );
    }
    Ok(methods)
}

/// What every method's run shares.
pub struct Shared<'a> {
    /// The experiment's directory: each run goes to `runs/<method>-s<seed>` in it.
    pub out: &'a Path,
    pub weights: MethodWeights,
    pub config: &'a RunConfig,
    pub loaded: &'a job::Loaded<Autodiff>,
    pub data: &'a job::JobData,
    pub base: &'a Llama<Backend>,
    pub layer: usize,
    pub generation: &'a GenerationSettings,
}

/// Trains `method` with `seed` from the base model and evaluates it against the base.
pub fn train_and_evaluate(sh: &Shared, method: &str, seed: u64) -> anyhow::Result<MethodResult> {
    let device = device();
    let mut c = sh.config.clone();
    c.out = sh.out.join(format!("runs/{method}-s{seed}"));
    c.train.seed = seed;
    c.objective = objective(method, &sh.config.objective, sh.weights, sh.layer);
    eprintln!("== {method} (seed {seed}): training");
    let loaded = job::Loaded {
        model: sh.loaded.model.clone(),
        tok: sh.loaded.tok.clone(),
        name: sh.loaded.name.clone(),
    };
    let data = job::JobData {
        train: sh.data.train.clone(),
        eval: sh.data.eval.clone(),
        summary: String::new(),
    };
    let launch = Launch {
        resume: false,
        dashboard: false,
        devices: std::slice::from_ref(&device),
    };
    let out = job::run::<Autodiff>(&c, loaded, data, &launch)?;
    eprintln!("== {method} (seed {seed}): evaluating");
    evaluate_method(
        method,
        seed,
        &out.trained,
        sh.base,
        &sh.loaded.tok,
        &sh.data.eval,
        &c,
        sh.layer,
        sh.generation,
        Some(out.summary),
        &device,
    )
}
