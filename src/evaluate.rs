//! What `evaluate` computes for a policy: the held-out pairs of its run, the objective whose loss
//! and regularizer value are reported per pair, the reference it is compared with, the pairs'
//! evaluation and the judged generations, and the summary it prints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use decpo_alignment::evaluate::{EvalSummary, PairEval, evaluate_pairs, summarize};
use decpo_alignment::judge::{Judge, JudgeQuestion};
use decpo_alignment::{LossType, ObjectiveConfig, Regularizer};
use decpo_datasets::{BatchIds, TokenizedPair};
use decpo_model::{Llama, LlamaTokenizer, SamplingConfig};

use crate::backend::{Backend, device};
use crate::experiment::eval::{GenerationResult, JudgedGeneration, judge_generations};
use crate::run::RunConfig;
use crate::run::cli::RegularizerArgs;
use crate::run::data::{check_heldout, eos_id, load_model, load_with_tokenizer, prepare};

/// What to evaluate, besides the policy's run configuration.
pub struct Evaluation {
    /// GGUF file, Hugging Face directory or `train` run directory.
    pub policy: PathBuf,
    /// The reference (`None`: the policy itself).
    pub reference: Option<PathBuf>,
    /// Every pair, not only the held-out ones.
    pub all_pairs: bool,
    /// Most pairs evaluated.
    pub n: Option<usize>,
    pub loss: LossType,
    /// β (`None`: the run's).
    pub beta: Option<f64>,
    /// The regularizer's mode (`None`: the run's, else paper; `none`: no regularizer).
    pub regularizer: Option<String>,
    pub regularizer_fields: RegularizerArgs,
    /// Judged generations, when a judge is given.
    pub generation: Option<(PathBuf, JudgedGeneration)>,
}

/// What `evaluate` found.
pub struct Evaluated {
    pub pairs: Vec<PairEval>,
    pub summary: EvalSummary,
    pub objective: ObjectiveConfig,
    pub generation: Option<GenerationResult>,
}

impl Evaluation {
    /// Evaluates the policy on the pairs `run` holds out (or all of them).
    pub fn run(&self, run: &RunConfig) -> anyhow::Result<Evaluated> {
        let (policy, tok, _) = load_with_tokenizer::<Backend>(&self.policy, &device())?;
        let reference = self.load_reference(&policy)?;
        let objective = self.objective(run, policy.config.num_hidden_layers)?;
        let eos = eos_id(&tok, &self.policy.display().to_string())?;
        let pairs = self.pairs(run, &tok, eos)?;
        let ids = BatchIds {
            pad: tok.pad_id(),
            eos,
        };
        let chunk = run.train.logits_chunk;
        let evals = evaluate_pairs(
            &policy,
            reference.as_ref(),
            &pairs,
            ids,
            &objective,
            chunk,
            &device(),
        );
        let generation = match &self.generation {
            Some((judge, request)) => Some(judged(judge, request, &policy, &tok, &pairs)?),
            None => None,
        };
        Ok(Evaluated {
            summary: summarize(&evals),
            pairs: evals,
            objective,
            generation,
        })
    }

    /// The reference model, which must share the policy's token ids.
    fn load_reference(&self, policy: &Llama<Backend>) -> anyhow::Result<Option<Llama<Backend>>> {
        let Some(r) = &self.reference else {
            return Ok(None);
        };
        let (m, _, _) = load_model::<Backend>(r, &device())?;
        if m.config.vocab_size != policy.config.vocab_size {
            bail!(
                "{} has a vocabulary of {} tokens, the policy {}: they cannot share token ids",
                r.display(),
                m.config.vocab_size,
                policy.config.vocab_size
            );
        }
        Ok(Some(m))
    }

    /// The objective whose loss and regularizer value are reported per pair.
    fn objective(&self, run: &RunConfig, n_layers: usize) -> anyhow::Result<ObjectiveConfig> {
        let mut regularizer = match &self.regularizer {
            Some(mode) => Regularizer::named(mode, n_layers / 3)
                .map_err(|e| anyhow::anyhow!("--regularizer: {e}"))?,
            None => Some(
                run.objective
                    .regularizer
                    .unwrap_or(Regularizer::paper(n_layers)),
            ),
        };
        if let Some(reg) = &mut regularizer {
            self.regularizer_fields.apply(reg);
        }
        let objective = ObjectiveConfig {
            loss: self.loss,
            beta: self.beta.unwrap_or(run.objective.beta),
            regularizer,
            ..ObjectiveConfig::default()
        };
        objective.validate(n_layers)?;
        Ok(objective)
    }

    /// The held-out part as the run (or the flags) split it, checked against the run's own
    /// list; or all pairs.
    fn pairs(
        &self,
        run: &RunConfig,
        tok: &LlamaTokenizer,
        eos: u32,
    ) -> anyhow::Result<Vec<TokenizedPair>> {
        let prepared = prepare(&run.data, tok, eos, run.train.seed)?;
        eprint!("{}", prepared.summary);
        check_heldout(&self.policy, &run.data, run.train.seed, &prepared.eval)?;
        let mut pairs = if self.all_pairs {
            prepared.train.into_iter().chain(prepared.eval).collect()
        } else {
            prepared.eval
        };
        if let Some(n) = self.n {
            pairs.truncate(n);
        }
        if pairs.is_empty() {
            bail!(match (self.n, self.all_pairs) {
                (Some(0), _) => "no pairs to evaluate: --n is 0".to_string(),
                (_, true) => "no pairs to evaluate (see the data summary above)".to_string(),
                (_, false) => "no held-out pairs to evaluate (see the data summary above): \
                               a larger data.eval_fraction, or --pairs all"
                    .to_string(),
            });
        }
        Ok(pairs)
    }
}

/// Generates from the first prompts and has the judge answer each (every line in the request's
/// file).
fn judged(
    judge_path: &Path,
    request: &JudgedGeneration,
    policy: &Llama<Backend>,
    tok: &LlamaTokenizer,
    pairs: &[TokenizedPair],
) -> anyhow::Result<GenerationResult> {
    let (jm, jt, _) = load_with_tokenizer::<Backend>(judge_path, &device())?;
    let judge = Judge::new(&jm, &jt, &device())?;
    judge_generations(policy, tok, pairs, &judge, request, &device(), |j| {
        eprintln!("[{}] {} (p_yes {:.3})", j.index, j.answer, j.p_yes)
    })
}

/// The judged-generation request for `task`, or an error naming the tasks that have a question.
pub fn generation_request(
    task: &str,
    prompts: usize,
    max_new_tokens: usize,
    sampling: SamplingConfig,
    file: PathBuf,
) -> anyhow::Result<JudgedGeneration> {
    let question = JudgeQuestion::for_task(task).with_context(|| {
        format!(
            "--judge: task `{task}` has no judge question (toxicity-pairs, hh-rlhf, \
             cognitive-reframing, sycophancy-*)"
        )
    })?;
    Ok(JudgedGeneration {
        question,
        prompts,
        max_new_tokens,
        sampling,
        file,
    })
}

impl Evaluated {
    /// The summary `evaluate` prints: the means under their TRL names, and the judge's verdict.
    pub fn describe(&self) -> String {
        let s = &self.summary;
        let mut out = format!(
            "{} held-out pairs, β {}, means:\n",
            s.pairs, self.objective.beta
        );
        let rows = [
            ("rewards/accuracies", format!("{:.3}", s.rewards_accuracies)),
            ("rewards/margins", format!("{:.4}", s.rewards_margins)),
            ("loss/preference", format!("{:.4}", s.loss_preference)),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<19} {value}");
        }
        if let (Some(r), Some(g)) = (s.loss_regularizer, self.objective.regularizer) {
            let _ = writeln!(
                out,
                "  {:<19} {r:.4} ({:?} at layer {}, site {:?}, before λ)",
                "loss/regularizer", g.mode, g.layer, g.site
            );
        }
        let _ = writeln!(out, "  {:<19} {:.2}", "logps/chosen", s.logps_chosen);
        let _ = writeln!(out, "  {:<19} {:.2}", "logps/rejected", s.logps_rejected);
        if let Some(g) = &self.generation {
            let _ = writeln!(
                out,
                "judged YES: {:.1} % of {} responses (every line in {})",
                g.yes_rate * 100.0,
                g.prompts,
                g.file.display()
            );
        }
        out
    }

    /// `{"pairs": [...], "summary": {...}, "generation": {...}}`.
    pub fn to_json(&self) -> anyhow::Result<serde_json::Value> {
        let mut v = serde_json::json!({ "pairs": self.pairs, "summary": self.summary });
        if let Some(g) = &self.generation {
            v["generation"] = serde_json::to_value(g)?;
        }
        Ok(v)
    }
}
