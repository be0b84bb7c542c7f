//! LoRA (Hu et al. 2021): a projection `y = x·W` becomes `y = x·W + (α/r)·dropout(x)·A·B`, with
//! `A: [d_in, r]` random, `B: [r, d_out]` zero (so a fresh adapter changes nothing) and `W` frozen.
//!
//! This file holds the adapters' configuration. Every projection of the model is a
//! [`crate::linear::Projection`]: the base linear layer plus an optional adapter. The reference
//! model of LoRA training is the same policy with the adapters removed
//! ([`crate::Llama::without_adapters`]): no second copy of the weights.

use std::ops::Range;

use burn::config::Config;

use crate::names::{PROJECTIONS, ProjectionName};

/// Which projections of which layers get adapters, and their shape.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    #[config(default = 8)]
    pub rank: usize,
    /// Scale numerator α (the update is scaled by α/r).
    #[config(default = 16.0)]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[config(default = 0.05)]
    pub dropout: f64,
    /// Hugging Face names of the adapted projections.
    #[config(default = "vec![\"q_proj\".into(), \"v_proj\".into(), \"up_proj\".into()]")]
    pub targets: Vec<String>,
    /// First adapted layer (inclusive).
    #[config(default = 0)]
    pub first_layer: usize,
    /// Last adapted layer (exclusive); `None` = through the last layer.
    #[config(default = "None")]
    pub end_layer: Option<usize>,
}

impl LoraConfig {
    pub fn validate(&self, n_layers: usize) -> Result<(), String> {
        if self.rank == 0 {
            return Err("lora rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "lora dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| ProjectionName::named(t).is_none())
        {
            return Err(format!(
                "lora target {t:?} is not one of {}",
                PROJECTIONS.map(|p| p.name).join(", ")
            ));
        }
        if self.targets.is_empty() {
            return Err("lora targets are empty".into());
        }
        let layers = self.layers(n_layers);
        if layers.is_empty() || layers.end > n_layers {
            return Err(format!(
                "lora layers {}..{} are not a non-empty range of the {n_layers} layers",
                self.first_layer,
                self.end_layer.unwrap_or(n_layers)
            ));
        }
        Ok(())
    }

    pub fn layers(&self, n_layers: usize) -> Range<usize> {
        self.first_layer..self.end_layer.unwrap_or(n_layers)
    }
}
