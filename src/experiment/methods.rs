//! The methods of the paper's Table 2 and one run of each: the objective a method trains with
//! on top of the shared configuration, and training plus evaluation against the base model.

use std::path::Path;

use anyhow::{Context, bail};
use decpo_alignment::{LossType, ObjectiveConfig, RegMode, Regularizer};
use decpo_model::Llama;
use decpo_model::weights::save::write_file_atomically;

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
    if let Some((layer, ratio)) = parse_variant(method) {
        let reg = Regularizer {
            layer,
            lambda_ratio: Some(ratio),
            ..regs.decpo
        };
        return with(LossType::Sigmoid, Some(reg));
    }
    match method {
        "sft" => with(LossType::Sft, None),
        "simpo" => with(LossType::Simpo, None),
        "l1" => with(LossType::Sigmoid, Some(l1)),
        "decpo" => with(LossType::Sigmoid, Some(regs.decpo)),
        _ => with(LossType::Sigmoid, None),
    }
}

/// The name of a DecPO variant of a sweep: the layer it regularizes and the gradient ratio that
/// sets its λ (`decpo-l10-r0.3`).
pub fn variant_name(layer: usize, ratio: f64) -> String {
    format!("decpo-l{layer}-r{ratio}")
}

/// The layer and gradient ratio of a variant's name ([`variant_name`]).
pub fn parse_variant(method: &str) -> Option<(usize, f64)> {
    let (layer, ratio) = method.strip_prefix("decpo-l")?.split_once("-r")?;
    Some((layer.parse().ok()?, ratio.parse().ok()?))
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

/// The file of an experiment's run directory that holds its evaluated result.
pub const RESULT_FILE: &str = "result.json";

/// Whether the run in `c.out` is one this experiment can carry on: `Ok(true)` when it was started
/// with configuration `c` (its checkpoints resume it, its result is reused), `Ok(false)` when the
/// directory holds no run, an error when it holds a run of another configuration.
fn same_run(c: &RunConfig) -> anyhow::Result<bool> {
    // λ set by a gradient ratio is saved once found: compare the ratio, not λ.
    let key = |c: &RunConfig| {
        let mut c = c.clone();
        if let Some(reg) = &mut c.objective.regularizer
            && reg.lambda_ratio.is_some()
        {
            reg.lambda = 0.0;
        }
        c
    };
    match RunConfig::of_run(&c.out)? {
        None => Ok(false),
        Some(own) if key(&own) == key(c) => Ok(true),
        Some(_) => bail!(
            "{} holds a run of another configuration (see its {}); give the experiment another \
             --out, or remove that run to train it again",
            c.out.display(),
            crate::run::config::CONFIG_FILE
        ),
    }
}

/// Trains `method` with `seed` from the base model and evaluates it against the base. A run this
/// experiment finished before (same configuration, its result saved) is read back instead; one
/// it started resumes from its last checkpoint.
pub fn train_and_evaluate(sh: &Shared, method: &str, seed: u64) -> anyhow::Result<MethodResult> {
    let device = device();
    let mut c = sh.config.clone();
    c.out = sh.out.join(format!("runs/{method}-s{seed}"));
    c.train.seed = seed;
    c.objective = objective(method, &sh.config.objective, sh.regularizers);
    let result_file = c.out.join(RESULT_FILE);
    let started = same_run(&c)?;
    if started && let Ok(text) = std::fs::read_to_string(&result_file) {
        let result: MethodResult = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", result_file.display()))?;
        eprintln!(
            "== {method} (seed {seed}): finished before, {}",
            result_file.display()
        );
        return Ok(result);
    }
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
        resume: started,
        dashboard: false,
        devices: std::slice::from_ref(&device),
    };
    let out = job::run::<Autodiff>(&c, loaded, data, &launch)?;
    eprintln!("== {method} (seed {seed}): evaluating");
    let result = evaluate_method(
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
    )?;
    write_file_atomically(&result_file, serde_json::to_string(&result)?.as_bytes())
        .with_context(|| format!("writing {}", result_file.display()))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_is_decpo_at_its_layer_with_lambda_set_by_its_ratio() {
        let name = variant_name(10, 0.3);
        assert_eq!(name, "decpo-l10-r0.3");
        assert_eq!(parse_variant(&name), Some((10, 0.3)));
        assert_eq!(parse_variant("decpo"), None);
        let o = objective(
            &name,
            &ObjectiveConfig::default(),
            MethodRegularizers::new(3),
        );
        let reg = o.regularizer.unwrap();
        assert_eq!(
            (reg.mode, reg.layer, reg.lambda_ratio),
            (RegMode::Paper, 10, Some(0.3))
        );
        assert_eq!(o.loss, LossType::Sigmoid);
    }
}
