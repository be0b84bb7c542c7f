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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegRows {
    /// Every policy sequence of the micro-batch: 2B rows.
    All,
    /// The chosen sequences only: B rows.
    Chosen,
}

/// Which token position gives a sequence's feature row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegPosition {
    /// The last non-padding token.
    Last,
    /// The mean over completion tokens.
    Mean,
}

/// The regularizer on the `mlp.up_proj` output of one decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Regularizer {
    /// DecPO as in the paper: ‖ẐẐᵀ − I‖²_F over the chosen rows and position.
    Paper {
        lambda: f64,
        layer: usize,
        rows: RegRows,
        position: RegPosition,
        normalize: bool,
    },
    /// DecPO as the authors' released script computed it: even rows of [chosen; rejected],
    /// padded position −1, A = |Z|, mean(AAᵀ − I).
    Released { lambda: f64, layer: usize },
    /// The paper's L1-Reg baseline: λ₁·mean_i Σ_f |z_if| at the paper mode's rows and position.
    L1 {
        lambda: f64,
        layer: usize,
        rows: RegRows,
        position: RegPosition,
    },
}

impl Regularizer {
    /// The paper's defaults for a model of `n_layers` layers: λ = 1e-4, layer ⌊n/3⌋, all rows,
    /// last token, normalised.
    pub fn paper(n_layers: usize) -> Self {
        Self::paper_at(n_layers / 3)
    }

    /// The paper mode with its defaults at `layer`.
    pub fn paper_at(layer: usize) -> Self {
        Regularizer::Paper {
            lambda: 1e-4,
            layer,
            rows: RegRows::All,
            position: RegPosition::Last,
            normalize: true,
        }
    }

    /// A regularizer by name at `layer`, with the defaults of SPEC section 3: `paper` (λ 1e-4,
    /// all rows, last token, normalised), `released` (λ 1e-3), `l1` (λ₁ 1e-4, all rows, last
    /// token); `none` is `None`.
    pub fn named(kind: &str, layer: usize) -> Result<Option<Self>> {
        Ok(match kind {
            "none" => None,
            "paper" => Some(Self::paper_at(layer)),
            "released" => Some(Regularizer::Released {
                lambda: 1e-3,
                layer,
            }),
            "l1" => Some(Regularizer::L1 {
                lambda: 1e-4,
                layer,
                rows: RegRows::All,
                position: RegPosition::Last,
            }),
            other => {
                return Err(AlignError::setting(
                    "regularizer",
                    format!("unknown value `{other}` (paper, released, l1, none)"),
                ));
            }
        })
    }

    /// Sets λ (λ₁ for `l1`).
    pub fn set_lambda(&mut self, value: f64) {
        match self {
            Regularizer::Paper { lambda, .. }
            | Regularizer::Released { lambda, .. }
            | Regularizer::L1 { lambda, .. } => *lambda = value,
        }
    }

    /// Sets the regularized layer.
    pub fn set_layer(&mut self, value: usize) {
        match self {
            Regularizer::Paper { layer, .. }
            | Regularizer::Released { layer, .. }
            | Regularizer::L1 { layer, .. } => *layer = value,
        }
    }

    pub fn layer(&self) -> usize {
        match *self {
            Regularizer::Paper { layer, .. }
            | Regularizer::Released { layer, .. }
            | Regularizer::L1 { layer, .. } => layer,
        }
    }

    pub fn lambda(&self) -> f64 {
        match *self {
            Regularizer::Paper { lambda, .. }
            | Regularizer::Released { lambda, .. }
            | Regularizer::L1 { lambda, .. } => lambda,
        }
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
            if reg.layer() >= n_layers {
                return Err(AlignError::setting(
                    "objective.regularizer.layer",
                    format!("{} is not a layer of a {n_layers}-layer model", reg.layer()),
                ));
            }
            if reg.lambda().is_nan() || reg.lambda() < 0.0 {
                return Err(AlignError::setting(
                    "objective.regularizer.lambda",
                    format!("must be >= 0, got {}", reg.lambda()),
                ));
            }
        }
        Ok(())
    }
}
