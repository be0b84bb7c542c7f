//! Settings of the preference loss and of the regularizer, with SPEC section 2/3 defaults.

use serde::{Deserialize, Serialize};

use crate::error::{AlignError, Result};

/// The per-pair preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// DPO: −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ).
    Sigmoid,
    /// IPO: (Δ̄ − 1/(2β))² on per-token mean log-ratios.
    Ipo,
    /// max(0, 1 − βΔ).
    Hinge,
    /// SimPO: −log σ(β·(mean logp_w − mean logp_l) − γ); reference-free.
    Simpo,
    /// Mean token NLL of the chosen completion.
    Sft,
}

/// How completion log-probs are reduced over tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Sum over completion tokens (TRL's default).
    Sum,
    /// Mean over completion tokens (the authors' DecPO trainer).
    Mean,
}

/// Which sequences give rows to the feature matrix Z.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegRows {
    /// Every policy sequence of the micro-batch: 2B rows.
    #[default]
    All,
    /// The chosen sequences only: B rows.
    Chosen,
}

/// Which token of a sequence gives its feature row: the regularizer's *site* (SPEC section 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Site {
    /// The last prompt token: chosen and rejected share it, so one row per pair (the chosen
    /// rows) whatever `rows` says. Where FD is measured.
    PromptLast,
    /// The mean over the completion's tokens, the final EOS excluded. (`mean` in configurations
    /// written before sites, which included the EOS.) The default: every token it averages is
    /// scored by the preference loss, chosen and rejected rows differ, and on SmolLM2 it is the
    /// site where the regularizer measurably moves FD (reports/smollm2-reframing-seeds: +0.67 ±
    /// 0.01 over DPO, 3 seeds), where at `eos` all rows sit on one token the loss never scores.
    #[default]
    #[serde(alias = "mean")]
    CompletionMean,
    /// The last completion token before the final EOS (the last token of a truncated
    /// completion).
    CompletionLast,
    /// The last real token, i.e. the appended EOS. (`last` in configurations written before
    /// sites; the default until 2026-12-02.)
    #[serde(alias = "last")]
    Eos,
}

/// What the regularizer computes from the feature rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegMode {
    /// DecPO as in the paper: ‖ẐẐᵀ − I‖²_F over the rows at the site.
    Paper,
    /// DecPO as the authors' released script computed it: even rows of [chosen; rejected],
    /// padded position −1, A = |Z|, mean(AAᵀ − I). Its rows and position are its own: `site`,
    /// `rows` and `normalize` do not apply.
    Released,
    /// The paper's L1-Reg baseline: λ₁·mean_i Σ_f |z_if| over the rows at the site.
    L1,
}

impl RegMode {
    /// The names a configuration file and `--regularizer` use.
    pub const NAMES: [&str; 3] = ["paper", "released", "l1"];

    /// The weight SPEC section 3 gives the mode: paper 1e-4, released 1e-3, l1 1e-4.
    pub fn default_lambda(self) -> f64 {
        match self {
            RegMode::Paper | RegMode::L1 => 1e-4,
            RegMode::Released => 1e-3,
        }
    }
}

/// The regularizer on the `mlp.up_proj` output of one decoder block: what it computes (`mode`),
/// its weight λ, the block (`layer`, 0-based) and where in each sequence it reads (`site`, `rows`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regularizer {
    #[serde(alias = "kind")]
    pub mode: RegMode,
    /// λ (λ₁ for `l1`).
    pub lambda: f64,
    pub layer: usize,
    #[serde(default, alias = "position")]
    pub site: Site,
    #[serde(default)]
    pub rows: RegRows,
    /// Paper mode: rows L2-normalised first, so L = Σ_{i≠j} cos²(z_i, z_j).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// When set, λ is not taken as given: it is set once, on the first step's pairs, so that
    /// ‖∇(λ·L_reg)‖ = `lambda_ratio`·‖∇L_pref‖; the λ found replaces `lambda` in the run's saved
    /// configuration and is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_ratio: Option<f64>,
}

fn yes() -> bool {
    true
}

impl Regularizer {
    /// `mode` at `layer` with SPEC section 3's defaults: the mode's λ, the `completion-mean` site,
    /// all rows, normalised.
    pub fn new(mode: RegMode, layer: usize) -> Self {
        Self {
            mode,
            lambda: mode.default_lambda(),
            layer,
            site: Site::default(),
            rows: RegRows::default(),
            normalize: true,
            lambda_ratio: None,
        }
    }

    /// The paper's regularizer for a model of `n_layers` layers: at layer ⌊n/3⌋, λ = 1e-4.
    pub fn paper(n_layers: usize) -> Self {
        Self::new(RegMode::Paper, n_layers / 3)
    }

    /// A regularizer by mode name at `layer` (see [`Regularizer::new`]); `none` is `None`.
    pub fn named(mode: &str, layer: usize) -> Result<Option<Self>> {
        if mode == "none" {
            return Ok(None);
        }
        let mode: RegMode = serde_json::from_value(serde_json::Value::String(mode.into()))
            .map_err(|_| {
                AlignError::setting(
                    "regularizer",
                    format!(
                        "unknown mode `{mode}` ({}, none)",
                        RegMode::NAMES.join(", ")
                    ),
                )
            })?;
        Ok(Some(Self::new(mode, layer)))
    }
}

/// Everything that defines the objective of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveConfig {
    pub loss: LossType,
    pub reduction: Reduction,
    /// β of the DPO family (0.1).
    pub beta: f64,
    /// ε of the sigmoid loss (0 = plain DPO).
    pub label_smoothing: f64,
    /// γ of SimPO (0.2).
    pub simpo_gamma: f64,
    pub regularizer: Option<Regularizer>,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            loss: LossType::Sigmoid,
            reduction: Reduction::Sum,
            beta: 0.1,
            label_smoothing: 0.0,
            simpo_gamma: 0.2,
            regularizer: None,
        }
    }
}

impl ObjectiveConfig {
    /// Checks the values; the message names the bad one.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        if self.beta.is_nan() || self.beta <= 0.0 {
            return Err(AlignError::setting(
                "objective.beta",
                format!("must be positive, got {}", self.beta),
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(AlignError::setting(
                "objective.label_smoothing",
                format!("must be in [0, 0.5), got {}", self.label_smoothing),
            ));
        }
        if let Some(reg) = &self.regularizer {
            if reg.layer >= n_layers {
                return Err(AlignError::setting(
                    "objective.regularizer.layer",
                    format!("{} is not a layer of a {n_layers}-layer model", reg.layer),
                ));
            }
            if let Some(r) = reg.lambda_ratio
                && !(r.is_finite() && r > 0.0)
            {
                return Err(AlignError::setting(
                    "objective.regularizer.lambda_ratio",
                    format!("must be positive, got {r}"),
                ));
            }
            if reg.lambda.is_nan() || reg.lambda < 0.0 {
                return Err(AlignError::setting(
                    "objective.regularizer.lambda",
                    format!("must be >= 0, got {}", reg.lambda),
                ));
            }
        }
        Ok(())
    }
}
