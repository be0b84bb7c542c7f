//! The paper's comparison: every method trained from one base model, evaluated side by side.

pub mod claims;
pub mod eval;
pub mod methods;
pub mod paired;
pub mod report;
pub mod run;
pub mod sweep;
