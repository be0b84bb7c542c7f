//! One run: its configuration, its data, the embedded default job and the job itself.

pub mod cli;
pub mod config;
pub mod data;
pub mod embedded;
pub mod job;

pub use config::{DataConfig, RunConfig, SftPhase, SplitKind};
