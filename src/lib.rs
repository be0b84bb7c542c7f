//! decpo: one run of DPO / DecPO from its configuration, and the measurements shared by the
//! binaries. The binaries in `bin/` are thin front ends over this library:
//!
//! - [`run`]: the configuration of a run (saved as its `config.toml`), its data preparation, the
//!   embedded default job and the job itself (SFT, then preference optimisation, evaluation,
//!   export);
//! - [`analysis`]: FD/AV per layer, top tokens, their files and plots (`analyze`, `experiment`);
//! - [`evaluate`]: a policy on its run's held-out pairs, and judged generations (`evaluate`);
//! - [`experiment`]: the paper's comparison of methods and its report;
//! - [`bench`]: the throughput benchmarks of `bench`;
//! - [`backend`]: the concrete burn backend picked by cargo feature;
//! - [`fuzzing`]: the fuzz targets, every parser of a user's file fed arbitrary bytes.

pub mod analysis;
pub mod backend;
pub mod bench;
pub mod evaluate;
pub mod experiment;
pub mod fuzzing;
pub mod run;
