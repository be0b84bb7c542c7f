//! Train/eval splits: the authors' rule (first 90 % train, last 10 % eval, in file order), a
//! seeded shuffle before the same cut, or a seeded split of whole prompt groups, which never puts
//! one prompt on both sides. Each side keeps file order.

use std::collections::HashMap;
use std::hash::Hash;

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
    /// The items grouped by their key (the prompt), the groups shuffled by `seed`, and whole
    /// groups held out until at least `ceil(eval_fraction * n)` items are: no key on both sides.
    ByKey { eval_fraction: f64, seed: u64 },
}

impl Default for SplitRule {
    fn default() -> Self {
        SplitRule::FileOrder { eval_fraction: 0.1 }
    }
}

/// Splits `items` into (train, eval); `key` groups them for [`SplitRule::ByKey`] (the other rules
/// ignore it).
pub fn split<T, K: Hash + Eq>(
    mut items: Vec<T>,
    rule: SplitRule,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<T>) {
    let eval_fraction = match rule {
        SplitRule::FileOrder { eval_fraction } => eval_fraction,
        SplitRule::Shuffled {
            eval_fraction,
            seed,
        } => {
            items.shuffle(&mut StdRng::seed_from_u64(seed));
            eval_fraction
        }
        SplitRule::ByKey {
            eval_fraction,
            seed,
        } => return split_groups(items, eval_fraction, seed, key),
    };
    let n_train = ((1.0 - eval_fraction) * items.len() as f64).floor() as usize;
    let eval = items.split_off(n_train.min(items.len()));
    (items, eval)
}

fn split_groups<T, K: Hash + Eq>(
    items: Vec<T>,
    eval_fraction: f64,
    seed: u64,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<T>) {
    // Group numbers in order of first appearance, so the shuffle depends on the file alone.
    let mut numbers = HashMap::new();
    let group: Vec<usize> = items
        .iter()
        .map(|t| {
            let next = numbers.len();
            *numbers.entry(key(t)).or_insert(next)
        })
        .collect();
    let mut sizes = vec![0usize; numbers.len()];
    for &g in &group {
        sizes[g] += 1;
    }
    let n_train = ((1.0 - eval_fraction) * items.len() as f64).floor() as usize;
    let want_eval = items.len() - n_train.min(items.len());
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut held_out = vec![false; sizes.len()];
    let mut n_eval = 0;
    for g in order {
        if n_eval >= want_eval {
            break;
        }
        held_out[g] = true;
        n_eval += sizes[g];
    }
    let (mut train, mut eval) = (Vec::new(), Vec::with_capacity(n_eval));
    for (item, g) in items.into_iter().zip(group) {
        if held_out[g] { &mut eval } else { &mut train }.push(item);
    }
    (train, eval)
}

/// Indices of the first `n` items whose key is not empty and not seen before: the distinct
/// prompts FD, AV and the judge are measured on (a repeated prompt would add a pair of identical
/// rows to FD and judge one prompt twice).
pub fn first_distinct<'a, T, K: Hash + Eq>(
    items: &'a [T],
    n: usize,
    key: impl Fn(&'a T) -> Option<K>,
) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .enumerate()
        .filter(|(_, t)| key(t).is_some_and(|k| seen.insert(k)))
        .map(|(i, _)| i)
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_order_takes_the_first_ninety_percent() {
        let (train, eval) = split((0..600).collect::<Vec<_>>(), SplitRule::default(), |&i| i);
        assert_eq!((train.len(), eval.len()), (540, 60));
        assert_eq!((train[0], eval[0]), (0, 540));
        let (train, eval) = split((0..2311).collect::<Vec<_>>(), SplitRule::default(), |&i| i);
        assert_eq!((train.len(), eval.len()), (2079, 232));
    }

    #[test]
    fn shuffled_split_is_a_seeded_permutation() {
        let rule = SplitRule::Shuffled {
            eval_fraction: 0.1,
            seed: 7,
        };
        let (a_train, a_eval) = split((0..100).collect::<Vec<_>>(), rule, |&i| i);
        let (b_train, b_eval) = split((0..100).collect::<Vec<_>>(), rule, |&i| i);
        assert_eq!((&a_train, &a_eval), (&b_train, &b_eval));
        assert_ne!(a_train, (0..90).collect::<Vec<_>>());
        let mut all: Vec<_> = a_train.into_iter().chain(a_eval).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn by_key_never_puts_one_key_on_both_sides() {
        // 100 items of 23 keys with uneven group sizes (item i has key i*i % 23).
        let items: Vec<usize> = (0..100).collect();
        let key = |&i: &usize| i * i % 23;
        let rule = SplitRule::ByKey {
            eval_fraction: 0.1,
            seed: 3,
        };
        let (train, eval) = split(items.clone(), rule, key);
        assert_eq!(train.len() + eval.len(), 100);
        assert!(eval.len() >= 10, "at least the asked share: {}", eval.len());
        let eval_keys: std::collections::HashSet<usize> = eval.iter().map(key).collect();
        assert!(train.iter().all(|i| !eval_keys.contains(&key(i))));
        // Every item of a held-out key is held out, and each side keeps file order.
        let held = items.iter().filter(|i| eval_keys.contains(&key(i))).count();
        assert_eq!(held, eval.len());
        assert!(train.windows(2).all(|w| w[0] < w[1]) && eval.windows(2).all(|w| w[0] < w[1]));
        // Seeded: the same seed the same split, another seed (here) another one.
        assert_eq!(
            split(items.clone(), rule, key),
            (train.clone(), eval.clone())
        );
        let other = SplitRule::ByKey {
            eval_fraction: 0.1,
            seed: 4,
        };
        assert_ne!(split(items, other, key).1, eval);
    }

    #[test]
    fn first_distinct_skips_repeats_and_empty_keys() {
        let prompts = ["a", "", "b", "a", "c", "b", "d"];
        let key = |p: &&'static str| (!p.is_empty()).then_some(*p);
        assert_eq!(first_distinct(&prompts, 3, key), vec![0, 2, 4]);
        assert_eq!(first_distinct(&prompts, 10, key), vec![0, 2, 4, 6]);
    }
}
