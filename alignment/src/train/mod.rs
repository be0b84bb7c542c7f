//! Training on burn-train: the step, its metrics, the schedule, clipping, the loop, resuming,
//! and several nodes.

pub mod calibrate;
pub mod checkpoint;
pub mod clip;
pub mod data;
pub mod exchange;
pub mod metrics;
pub mod nodes;
pub mod reference;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod session;
pub mod step;
