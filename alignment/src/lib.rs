//! Preference optimisation for Llama models: the DPO family of losses and the DecPO
//! decorrelation regularizer (arXiv 2406.17969), over any burn backend.

pub mod config;
pub mod error;
pub mod evaluate;
pub mod judge;
pub mod loss;
pub mod measure;
pub mod objective;
pub mod train;

pub use config::{LossType, ObjectiveConfig, Reduction, RegMode, RegRows, Regularizer, Site};
pub use error::{AlignError, Result};
pub use objective::{StepOutput, objective};
