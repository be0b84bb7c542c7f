//! The objective of one step: a preference loss plus an optional activation regularizer.

pub mod decorrelation;
pub mod preference;
