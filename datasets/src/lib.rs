//! Preference data for DPO/DecPO, read in order: a file row ([`read`]) -> [`PreferencePair`]
//! ([`tasks`]) -> [`TokenizedPair`] ([`tokenize`]) -> [`PreferenceBatch`] ([`batch`]).

pub mod batch;
pub mod cache;
pub mod default_job;
pub mod error;
pub mod pair;
pub mod read;
pub mod split;
pub mod summary;
pub mod tasks;
pub mod template;
pub mod tokenize;

pub use batch::{BatchIds, PreferenceBatch, epoch_batches};
pub use error::{DataError, Result};
pub use pair::{Invalid, PreferencePair, Turns};
pub use split::{SplitRule, first_distinct, split};
pub use summary::{LengthStats, Percentiles};
pub use tasks::{ColumnMap, LoadedPairs, Task, load_pairs};
pub use template::Template;
pub use tokenize::{TokenizeConfig, TokenizeReport, TokenizedPair, tokenize_pairs};
