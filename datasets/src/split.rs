//! Train/eval splits: the authors' rule (first 90 % train, last 10 % eval, in file order) or a
//! seeded shuffle before the same cut.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// How to split one file into train and eval parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitRule {
    /// The first `floor((1 - eval_fraction) * n)` items train, in file order.
    FileOrder { eval_fraction: f64 },
    /// The same cut after a shuffle seeded by `seed`.
    Shuffled { eval_fraction: f64, seed: u64 },
}

impl Default for SplitRule {
    fn default() -> Self {
        SplitRule::FileOrder { eval_fraction: 0.1 }
    }
}

/// Splits `items` into (train, eval).
pub fn split<T>(mut items: Vec<T>, rule: SplitRule) -> (Vec<T>, Vec<T>) {
    let eval_fraction = match rule {
        SplitRule::FileOrder { eval_fraction } => eval_fraction,
        SplitRule::Shuffled {
            eval_fraction,
            seed,
        } => {
            items.shuffle(&mut StdRng::seed_from_u64(seed));
            eval_fraction
        }
    };
    let n_train = ((1.0 - eval_fraction) * items.len() as f64).floor() as usize;
    let eval = items.split_off(n_train.min(items.len()));
    (items, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_order_takes_the_first_ninety_percent() {
        let (train, eval) = split((0..600).collect::<Vec<_>>(), SplitRule::default());
        assert_eq!((train.len(), eval.len()), (540, 60));
        assert_eq!((train[0], eval[0]), (0, 540));
        let (train, eval) = split((0..2311).collect::<Vec<_>>(), SplitRule::default());
        assert_eq!((train.len(), eval.len()), (2079, 232));
    }

    #[test]
    fn shuffled_split_is_a_seeded_permutation() {
        let rule = SplitRule::Shuffled {
            eval_fraction: 0.1,
            seed: 7,
        };
        let (a_train, a_eval) = split((0..100).collect::<Vec<_>>(), rule);
        let (b_train, b_eval) = split((0..100).collect::<Vec<_>>(), rule);
        assert_eq!((&a_train, &a_eval), (&b_train, &b_eval));
        assert_ne!(a_train, (0..90).collect::<Vec<_>>());
        let mut all: Vec<_> = a_train.into_iter().chain(a_eval).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}
