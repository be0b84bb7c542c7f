//! Monosemanticity measures of whole models (FD, AV, top tokens) and their outputs.

pub mod measures;
pub mod plots;
