//! Training on burn-train: the step, its metrics, the schedule, clipping and the loop.

pub mod clip;
pub mod data;
pub mod metrics;
pub mod run;
pub mod schedule;
pub mod session;
pub mod step;
