//! Length statistics of tokenized pairs, for the dataset summary.

use crate::tokenize::TokenizedPair;

/// Percentiles (numpy's default linear interpolation) of a set of lengths.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// `None` for no values.
    pub fn of(values: impl IntoIterator<Item = usize>) -> Option<Self> {
        let mut v: Vec<usize> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| {
            let pos = q / 100.0 * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] as f64 + (v[hi] as f64 - v[lo] as f64) * (pos - lo as f64)
        };
        Some(Self {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: at(100.0),
        })
    }
}

/// Token-length percentiles of prompts, chosen and rejected completions, and whole chosen rows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LengthStats {
    pub prompt: Percentiles,
    pub chosen: Percentiles,
    pub rejected: Percentiles,
    pub prompt_plus_chosen: Percentiles,
}

impl LengthStats {
    pub fn of(pairs: &[TokenizedPair]) -> Option<Self> {
        Some(Self {
            prompt: Percentiles::of(pairs.iter().map(|p| p.prompt_ids.len()))?,
            chosen: Percentiles::of(pairs.iter().map(|p| p.chosen_ids.len()))?,
            rejected: Percentiles::of(pairs.iter().map(|p| p.rejected_ids.len()))?,
            prompt_plus_chosen: Percentiles::of(
                pairs
                    .iter()
                    .map(|p| p.prompt_ids.len() + p.chosen_ids.len()),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], [50, 90, 99, 100]) = [3, 7.6, 9.76, 10]
        let p = Percentiles::of([4, 1, 10, 3, 2]).unwrap();
        assert_eq!((p.p50, p.max), (3.0, 10.0));
        assert!(
            (p.p90 - 7.6).abs() < 1e-12 && (p.p99 - 9.76).abs() < 1e-12,
            "{p:?}"
        );
        assert_eq!(Percentiles::of([]), None);
    }
}
