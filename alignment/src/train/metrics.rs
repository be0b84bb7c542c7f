//! The step's numbers as burn-train numeric metrics, so they show in burn's dashboard under the
//! names TRL users know (SPEC section 2).

use std::sync::Arc;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};

use crate::train::step::StepValues;

impl Adaptor<StepValues> for StepValues {
    fn adapt(&self) -> StepValues {
        self.clone()
    }
}

/// One field of [`StepValues`], averaged over pairs within a burn-train epoch.
#[derive(Clone)]
pub struct ValueMetric {
    name: MetricName,
    field: fn(&StepValues) -> Option<f64>,
    higher_is_better: bool,
    state: NumericMetricState,
}

impl ValueMetric {
    fn new(name: &str, higher_is_better: bool, field: fn(&StepValues) -> Option<f64>) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            field,
            higher_is_better,
            state: NumericMetricState::default(),
        }
    }

    /// Every metric of a step; `training` adds those only training has (grad norm, lr, speed).
    pub fn all(training: bool) -> Vec<Self> {
        let mut m = vec![
            Self::new("loss", false, |v| Some(v.loss)),
            Self::new("loss/preference", false, |v| Some(v.loss_pref)),
            Self::new("loss/regularizer", false, |v| Some(v.loss_reg)),
            Self::new("rewards/chosen", true, |v| Some(v.rewards_chosen)),
            Self::new("rewards/rejected", false, |v| Some(v.rewards_rejected)),
            Self::new("rewards/margins", true, |v| Some(v.rewards_margins)),
            Self::new("rewards/accuracies", true, |v| Some(v.rewards_accuracies)),
            Self::new("logps/chosen", true, |v| Some(v.logps_chosen)),
            Self::new("logps/rejected", false, |v| Some(v.logps_rejected)),
            Self::new("fd/dec_layer", true, |v| v.fd),
        ];
        if training {
            m.extend([
                Self::new("grad_norm", false, |v| v.grad_norm),
                Self::new("grad_norm/ratio", false, |v| v.grad_norm_ratio),
                Self::new("learning_rate", false, |v| v.learning_rate),
                Self::new("tokens/s", true, |v| v.tokens_per_s),
            ]);
        }
        m
    }
}

impl Metric for ValueMetric {
    type Input = StepValues;

    fn update(&mut self, item: &StepValues, _metadata: &MetricMetadata) -> SerializedEntry {
        let value = (self.field)(item).unwrap_or(f64::NAN);
        self.state.update(
            value,
            item.pairs.max(1),
            FormatOptions::new(self.name.clone()).precision(4),
        )
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.higher_is_better,
        }
        .into()
    }
}

impl Numeric for ValueMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
