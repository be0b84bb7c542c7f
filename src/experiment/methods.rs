//! The methods of the paper's Table 2 and one run of each: the objective a method trains with
//! on top of the shared configuration, and training plus evaluation against the base model.

use std::path::Path;

use anyhow::bail;
use decpo_alignment::{LossType, ObjectiveConfig, RegMode, Regularizer};
use decpo_model::Llama;

use super::eval::{GenerationSettings, MethodResult, evaluate_method};
use crate::backend::{Autodiff, Backend, device};
use crate::run::RunConfig;
use crate::run::job::{self, Launch};

/// The methods of the paper's Table 2.
pub const METHODS: [&str; 5] = ["sft", "dpo", "simpo", "l1", "decpo"];

/// The regularizers of L1-Reg and DecPO: DecPO's (paper mode) and L1-Reg's weight λ₁, L1-Reg
/// reading the same layer, site and rows as DecPO.
#[derive(Debug, Clone, Copy)]
pub struct MethodRegularizers {
    pub decpo: Regularizer,
    pub l1_lambda: f64,
}

impl MethodRegularizers {
    /// The SPEC's defaults at `layer`.
    pub fn new(layer: usize) -> Self {
        Self {
            decpo: Regularizer::new(RegMode::Paper, layer),
            l1_lambda: RegMode::L1.default_lambda(),
        }
    }
}

/// The objective of `method` on top of the shared one.
pub fn objective(
    method: &str,
    base: &ObjectiveConfig,
    regs: MethodRegularizers,
) -> ObjectiveConfig {
    let with = |loss, regularizer| ObjectiveConfig {
        loss,
        regularizer,
        ..base.clone()
    };
    let l1 = Regularizer {
        mode: RegMode::L1,
        lambda: regs.l1_lambda,
        ..regs.decpo
    };
    match method {
        "sft" => with(LossType::Sft, None),
        "simpo" => with(LossType::Simpo, None),
        "l1" => with(LossType::Sigmoid, Some(l1)),
        "decpo" => with(LossType::Sigmoid, Some(regs.decpo)),
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
    pub regularizers: MethodRegularizers,
    pub config: &'a RunConfig,
    pub loaded: &'a job::Loaded<Autodiff>,
    pub data: &'a job::JobData,
    pub base: &'a Llama<Backend>,
    pub generation: &'a GenerationSettings,
}

/// Trains `method` with `seed` from the base model and evaluates it against the base.
pub fn train_and_evaluate(sh: &Shared, method: &str, seed: u64) -> anyhow::Result<MethodResult> {
    let device = device();
    let mut c = sh.config.clone();
    c.out = sh.out.join(format!("runs/{method}-s{seed}"));
    c.train.seed = seed;
    c.objective = objective(method, &sh.config.objective, sh.regularizers);
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
        &sh.regularizers.decpo,
        sh.generation,
        Some(out.summary),
        &device,
    )
}
