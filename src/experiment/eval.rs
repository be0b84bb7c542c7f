//! Evaluation of one trained model (or the base): held-out pairs against the base model,
//! FD/AV per layer with top tokens, and generation judged by a local model.

use std::path::PathBuf;

use anyhow::Context;
use decpo_alignment::evaluate::{EvalSummary, evaluate_pairs, summarize};
use decpo_alignment::judge::{
    Judge, JudgeCheck, JudgeQuestion, Judged, check_judge, generate_and_judge, write_jsonl,
    yes_rate,
};
use decpo_alignment::measure::{LayerMeasure, site_measures};
use decpo_alignment::train::data::PairSet;
use decpo_alignment::{LossType, ObjectiveConfig, Regularizer};
use decpo_datasets::TokenizedPair;
use decpo_model::{Llama, LlamaTokenizer, SamplingConfig};
use serde::{Deserialize, Serialize};

use crate::analysis::measures::{Measured, ModelAnalysis, analyze_loaded};
use crate::backend::Backend;
use crate::run::RunConfig;
use crate::run::data::load_with_tokenizer;
use crate::run::job::{MEASURE_PROMPTS, Summary};

/// How the generation eval runs.
pub struct GenerationSettings {
    /// The task's judge question; `None`: no generation eval.
    pub question: Option<JudgeQuestion>,
    pub prompts: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// Judge model; `None`: the base model.
    pub judge: Option<PathBuf>,
}

/// What the judge said about one model's responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationResult {
    pub prompts: usize,
    pub yes: usize,
    pub yes_rate: f64,
    pub mean_p_yes: f64,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: String,
    pub seed: u64,
    /// Held-out pairs, DPO (sigmoid, the run's β) against the base model.
    pub eval: EvalSummary,
    pub analysis: ModelAnalysis,
    pub generation: Option<GenerationResult>,
    /// The training run's own summary (absent for the base model).
    pub train: Option<Summary>,
    /// FD, AV and sparsity per layer at DecPO's site and rows over the held-out pairs (absent in
    /// results written before it was measured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_layers: Vec<LayerMeasure>,
}

/// Evaluates `model` (a trained method, or the base itself) against `base`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_method(
    method: &str,
    seed: u64,
    model: &Llama<Backend>,
    base: &Llama<Backend>,
    tok: &LlamaTokenizer,
    eval_set: &PairSet,
    c: &RunConfig,
    regularizer: &Regularizer,
    generation_settings: &GenerationSettings,
    train: Option<Summary>,
    device: &<Backend as burn::tensor::backend::BackendTypes>::Device,
) -> anyhow::Result<MethodResult> {
    // DPO's view of every model, with DecPO's regularizer value reported per pair.
    let objective = ObjectiveConfig {
        loss: LossType::Sigmoid,
        regularizer: Some(*regularizer),
        ..c.objective.clone()
    };
    let pairs = evaluate_pairs(
        model,
        Some(base),
        &eval_set.pairs,
        eval_set.ids,
        &objective,
        c.train.logits_chunk,
        device,
    );
    let name = if method == "base" {
        "base".to_string()
    } else {
        format!("{method}-s{seed}")
    };
    let pairs_file = c.out.join("eval_pairs.json");
    std::fs::create_dir_all(&c.out)?;
    std::fs::write(&pairs_file, serde_json::to_string_pretty(&pairs)?)
        .with_context(|| format!("{}", pairs_file.display()))?;
    let eval = summarize(&pairs);
    let prompts = eval_set.prompts(MEASURE_PROMPTS);
    let layers: Vec<usize> = (0..model.config.num_hidden_layers).collect();
    let analysis = analyze_loaded(
        name.clone(),
        c.out.clone(),
        model,
        tok,
        Measured::Prompts {
            prompts: &prompts,
            pad_id: eval_set.ids.pad,
        },
        &layers,
        10,
        device,
    )?;
    let site_layers = site_measures(
        model,
        eval_set,
        regularizer.site,
        regularizer.rows,
        &layers,
        c.train.micro_batch,
        device,
    );
    let generation = generate_and_judge_method(
        model,
        base,
        tok,
        eval_set,
        c,
        generation_settings,
        seed,
        device,
    )?;
    eprintln!(
        "{name}: reward accuracy {:.3}, margin {:.4}{}",
        eval.rewards_accuracies,
        eval.rewards_margins,
        generation
            .as_ref()
            .map(|g| format!(", judged YES {}/{}", g.yes, g.prompts))
            .unwrap_or_default()
    );
    Ok(MethodResult {
        method: method.to_string(),
        seed,
        eval,
        analysis,
        generation,
        train,
        site_layers,
    })
}

/// Generation judged by a local model (the base model unless the settings name a judge), when
/// the task has a judge question and prompts are asked for; every line in `generations.jsonl`.
#[allow(clippy::too_many_arguments)]
fn generate_and_judge_method(
    model: &Llama<Backend>,
    base: &Llama<Backend>,
    tok: &LlamaTokenizer,
    eval_set: &PairSet,
    c: &RunConfig,
    generation_settings: &GenerationSettings,
    seed: u64,
    device: &<Backend as burn::tensor::backend::BackendTypes>::Device,
) -> anyhow::Result<Option<GenerationResult>> {
    Ok(match generation_settings.question {
        Some(q) if generation_settings.prompts > 0 => {
            let loaded = load_judge(generation_settings, device)?;
            let (jm, jt) = match &loaded {
                Some((m, t, _)) => (m, t),
                None => (base, tok),
            };
            let judge = Judge::new(jm, jt, device)?;
            let request = JudgedGeneration {
                question: q,
                prompts: generation_settings.prompts,
                max_new_tokens: generation_settings.max_new_tokens,
                sampling: SamplingConfig {
                    temperature: generation_settings.temperature,
                    top_p: 1.0,
                    seed,
                },
                file: c.out.join("generations.jsonl"),
            };
            Some(judge_generations(
                model,
                tok,
                &eval_set.pairs,
                &judge,
                &request,
                device,
                |_| {},
            )?)
        }
        _ => None,
    })
}

type Loaded = (Llama<Backend>, LlamaTokenizer, PathBuf);

/// The judge model the settings name (`None`: the base model judges).
fn load_judge(
    settings: &GenerationSettings,
    device: &<Backend as burn::tensor::backend::BackendTypes>::Device,
) -> anyhow::Result<Option<Loaded>> {
    settings
        .judge
        .as_ref()
        .map(|path| load_with_tokenizer::<Backend>(path, device).context("loading the judge"))
        .transpose()
}

/// The judge on the gold completions of the held-out pairs (as many prompts as it will judge
/// generations of), before any of its verdicts on generations is believed; `None` without a
/// generation eval.
pub fn check_the_judge(
    settings: &GenerationSettings,
    base: &Llama<Backend>,
    tok: &LlamaTokenizer,
    eval_set: &PairSet,
    device: &<Backend as burn::tensor::backend::BackendTypes>::Device,
) -> anyhow::Result<Option<JudgeCheck>> {
    let Some(question) = settings.question.filter(|_| settings.prompts > 0) else {
        return Ok(None);
    };
    let loaded = load_judge(settings, device)?;
    let (jm, jt) = match &loaded {
        Some((m, t, _)) => (m, t),
        None => (base, tok),
    };
    let judge = Judge::new(jm, jt, device)?;
    let check = check_judge(&judge, tok, &eval_set.pairs, settings.prompts, question)?;
    eprintln!(
        "judge on {} gold pairs: AUC {:.3} (p(YES) chosen {:.3}, rejected {:.3}); side by side \
         it prefers the chosen on {:.3} of them, both orders agreeing on {:.3}{}",
        check.pairs,
        check.auc,
        check.mean_p_yes_chosen,
        check.mean_p_yes_rejected,
        check.pairwise_accuracy.unwrap_or(f64::NAN),
        check.pairwise_consistency.unwrap_or(f64::NAN),
        if check.trusted() {
            ""
        } else {
            ": below 0.75, its verdicts on generations are not a result"
        }
    );
    Ok(Some(check))
}

/// A judged generation: the question the judge answers, how many prompts, how to decode, and
/// where every (prompt, response, answer) line goes.
pub struct JudgedGeneration {
    pub question: JudgeQuestion,
    pub prompts: usize,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    pub file: PathBuf,
}

/// Generates from the first `request.prompts` prompts of `pairs`, has `judge` answer each and
/// writes every line to `request.file`; `progress` sees each answer as it comes.
pub fn judge_generations(
    model: &Llama<Backend>,
    tok: &LlamaTokenizer,
    pairs: &[TokenizedPair],
    judge: &Judge<Backend>,
    request: &JudgedGeneration,
    device: &<Backend as burn::tensor::backend::BackendTypes>::Device,
    progress: impl FnMut(&Judged),
) -> anyhow::Result<GenerationResult> {
    let judged = generate_and_judge(
        model,
        tok,
        pairs,
        request.prompts,
        request.max_new_tokens,
        &request.sampling,
        request.question,
        judge,
        device,
        progress,
    )?;
    write_jsonl(&request.file, &judged)?;
    let (yes_rate, mean_p_yes) = yes_rate(&judged);
    Ok(GenerationResult {
        prompts: judged.len(),
        yes: judged.iter().filter(|j| j.answer == "YES").count(),
        yes_rate,
        mean_p_yes,
        file: request.file.clone(),
    })
}
