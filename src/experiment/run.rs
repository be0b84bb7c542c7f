//! One experiment from start to report: the base model evaluated, every (seed, method) trained
//! from it and evaluated, and the report written.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::eval::{GenerationSettings, MethodResult, check_the_judge, evaluate_method};
use super::methods::{MethodRegularizers, Shared, objective, train_and_evaluate, variant_name};
use super::report;
use crate::backend::{self, Autodiff, device};
use crate::run::RunConfig;
use crate::run::cli::RegularizerArgs;
use crate::run::job;
use decpo_alignment::judge::JudgeCheck;

/// An experiment: the shared configuration and what varies.
pub struct Experiment {
    /// The report's directory; the runs go to `runs/` in it.
    pub out: PathBuf,
    pub methods: Vec<String>,
    pub seeds: Vec<u64>,
    /// The configuration every run shares before its method's objective (no SFT phase: every
    /// method starts from the same weights).
    pub config: RunConfig,
    /// DecPO's regularizer fields (L1-Reg reads the same layer, site and rows).
    pub regularizer: RegularizerArgs,
    pub l1_lambda: Option<f64>,
    /// Only the first N training pairs (file order), for a smaller budget.
    pub train_pairs: Option<usize>,
    /// Judged generations (`prompts` 0: none); the question comes from the task.
    pub gen_prompts: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub judge: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
    /// The dose-response sweep: DecPO once per (layer, gradient ratio) instead of once.
    pub sweep: Option<Sweep>,
    /// Filled in by [`Experiment::run`]: the judge on the gold held-out pairs.
    pub judge_check: Option<JudgeCheck>,
}

/// DecPO's regularizer swept over layers and gradient ratios (λ set by the ratio on each run's
/// first step); the report adds the dose-response section.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub lambda_ratios: Vec<f64>,
    /// Empty: the regularizer's own layer.
    pub layers: Vec<usize>,
}

impl Experiment {
    /// Runs every method for every seed and writes the report; returns the files written.
    pub fn run(mut self) -> anyhow::Result<Vec<PathBuf>> {
        let device = device();
        let started = Instant::now();
        std::fs::create_dir_all(&self.out).with_context(|| format!("{}", self.out.display()))?;
        self.config.sft = None;
        self.config.out = self.out.join("runs/base");
        let loaded = job::load::<Autodiff>(&mut self.config, &device)?;
        let n_layers = loaded.model.config.num_hidden_layers;
        let mut regularizers = MethodRegularizers::new(n_layers / 3);
        self.regularizer.apply(&mut regularizers.decpo);
        regularizers.l1_lambda = self.l1_lambda.unwrap_or(regularizers.l1_lambda);
        objective("decpo", &self.config.objective, regularizers).validate(n_layers)?;
        let mut data = job::data(&self.config, &loaded.tok, &loaded.name)?;
        print!("{}", data.summary);
        if let Some(n) = self.train_pairs {
            data.train.pairs.truncate(n);
        }
        let generation = GenerationSettings {
            question: decpo_alignment::judge::JudgeQuestion::for_task(&self.config.data.task),
            prompts: self.gen_prompts,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            judge: self.judge.clone(),
        };
        let base = burn::module::AutodiffModule::valid(&loaded.model);
        self.judge_check = check_the_judge(&generation, &base, &loaded.tok, &data.eval, &device)?;
        eprintln!("== base model: evaluating");
        let mut results: Vec<MethodResult> = vec![evaluate_method(
            "base",
            0,
            &base,
            &base,
            &loaded.tok,
            &data.eval,
            &self.config,
            &regularizers.decpo,
            &generation,
            None,
            &device,
        )?];
        let shared = Shared {
            out: &self.out,
            regularizers,
            config: &self.config,
            loaded: &loaded,
            data: &data,
            base: &base,
            generation: &generation,
        };
        let methods = self.expanded_methods(regularizers.decpo.layer, n_layers)?;
        for &seed in &self.seeds {
            for method in &methods {
                results.push(train_and_evaluate(&shared, method, seed)?);
            }
        }
        let settings = self.settings(&loaded.name, &data, &regularizers, n_layers, started)?;
        report::write(&self.out, &settings, &results)
    }

    /// The methods in the order they run: with a sweep, `decpo` becomes one variant per layer and
    /// gradient ratio.
    fn expanded_methods(&self, layer: usize, n_layers: usize) -> anyhow::Result<Vec<String>> {
        let Some(sweep) = &self.sweep else {
            return Ok(self.methods.clone());
        };
        let layers = if sweep.layers.is_empty() {
            vec![layer]
        } else {
            sweep.layers.clone()
        };
        if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
            anyhow::bail!("--regularizer-layers: {bad} is not a layer of a {n_layers}-layer model");
        }
        if let Some(bad) = sweep
            .lambda_ratios
            .iter()
            .find(|r| !(r.is_finite() && **r > 0.0))
        {
            anyhow::bail!("--regularizer-lambda-ratios: {bad} is not a positive ratio");
        }
        let mut out = Vec::new();
        for m in &self.methods {
            if m == "decpo" {
                for &l in &layers {
                    out.extend(sweep.lambda_ratios.iter().map(|&r| variant_name(l, r)));
                }
            } else {
                out.push(m.clone());
            }
        }
        Ok(out)
    }

    /// What the report says about how the experiment ran.
    fn settings(
        &self,
        model: &str,
        data: &job::JobData,
        regs: &MethodRegularizers,
        n_layers: usize,
        started: Instant,
    ) -> anyhow::Result<report::Settings> {
        Ok(report::Settings {
            model: model.to_string(),
            task: self.config.data.task.clone(),
            files: self.config.data.files.clone(),
            train_pairs: data.train.pairs.len(),
            eval_pairs: data.eval.pairs.len(),
            layer: regs.decpo.layer,
            n_layers,
            seeds: self.seeds.clone(),
            config: toml::to_string(&self.config)?,
            decpo_lambda: regs.decpo.lambda,
            l1_lambda: regs.l1_lambda,
            site: regs.decpo.site,
            rows: regs.decpo.rows,
            gen_prompts: self.gen_prompts,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            judge: self.judge.as_ref().map_or_else(
                || format!("{} (the base model)", model),
                |j| j.display().to_string(),
            ),
            command: self.command.clone(),
            minutes: started.elapsed().as_secs_f64() / 60.0,
            backend: backend::name().into(),
            judge_check: self.judge_check,
        })
    }
}
