//! Learning-rate schedule: linear warmup from 0, then constant or cosine decay to 0.
//!
//! ```text
//! lr(s) = peak · s / warmup                                  s ≤ warmup   (s counts from 1)
//! lr(s) = peak                                               constant
//! lr(s) = peak · ½(1 + cos(π · (s − warmup) / (total − warmup)))   cosine
//! ```
//! The record is the step count, so a resumed run continues the same curve.

use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Constant,
    Cosine,
}

#[derive(Debug, Clone)]
pub struct WarmupSchedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
    step: usize,
}

impl WarmupSchedule {
    pub fn new(peak: f64, warmup: usize, total: usize, decay: Decay) -> Self {
        Self {
            peak,
            warmup,
            total,
            decay,
            step: 0,
        }
    }

    /// The rate of optimizer step `s` (1-based).
    pub fn at(&self, s: usize) -> f64 {
        if s <= self.warmup {
            return self.peak * s as f64 / self.warmup.max(1) as f64;
        }
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let t = ((s - self.warmup) as f64 / span).min(1.0);
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

impl LrScheduler for WarmupSchedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        self.step += 1;
        self.at(self.step)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_zero() {
        let s = WarmupSchedule::new(1.0, 4, 12, Decay::Cosine);
        assert_eq!(s.at(1), 0.25);
        assert_eq!(s.at(4), 1.0);
        assert!((s.at(8) - 0.5).abs() < 1e-12);
        assert!(s.at(12).abs() < 1e-12);
        let c = WarmupSchedule::new(2.0, 0, 12, Decay::Constant);
        assert_eq!(c.at(1), 2.0);
        assert_eq!(c.at(12), 2.0);
    }
}
