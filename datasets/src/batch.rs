//! Batches for a DPO step: chosen rows, then rejected rows, right-padded.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use decpo_model::CompletionBatch;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::tokenize::TokenizedPair;

/// `B` pairs as `2B` rows of length `T`: rows `0..B` are prompt + chosen of pairs `0..B`, rows
/// `B..2B` prompt + rejected of the same pairs, each right-padded with `pad_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceBatch {
    /// Number of pairs, B.
    pub pairs: usize,
    /// Padded length, T.
    pub seq: usize,
    /// `[2B, T]` token ids.
    pub input_ids: Vec<i64>,
    /// `[2B, T]`, 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
    /// `[2B, T]`, 1 on completion tokens (EOS included), 0 on prompt and padding.
    pub completion_mask: Vec<i64>,
    /// `[2B, T]`, 1 on a completion's final EOS (none when truncation cut it), 0 elsewhere.
    pub eos_mask: Vec<i64>,
}

/// The special token ids a batch needs: what pads rows, and the EOS that ends completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIds {
    pub pad: u32,
    pub eos: u32,
}

impl PreferenceBatch {
    /// Builds the batch of `pairs` (at least one).
    pub fn new(pairs: &[&TokenizedPair], ids: BatchIds) -> Self {
        let seq = pairs.iter().map(|p| p.max_len()).max().unwrap_or(0);
        let rows = 2 * pairs.len();
        let mut batch = Self {
            pairs: pairs.len(),
            seq,
            input_ids: vec![ids.pad as i64; rows * seq],
            attention_mask: vec![0; rows * seq],
            completion_mask: vec![0; rows * seq],
            eos_mask: vec![0; rows * seq],
        };
        let chosen = pairs.iter().map(|p| (&p.prompt_ids, &p.chosen_ids));
        let rejected = pairs.iter().map(|p| (&p.prompt_ids, &p.rejected_ids));
        for (row, (prompt, completion)) in chosen.chain(rejected).enumerate() {
            let start = row * seq;
            for (t, &id) in prompt.iter().chain(completion.iter()).enumerate() {
                batch.input_ids[start + t] = id as i64;
                batch.attention_mask[start + t] = 1;
                batch.completion_mask[start + t] = (t >= prompt.len()) as i64;
            }
            if completion.last() == Some(&ids.eos) {
                batch.eos_mask[start + prompt.len() + completion.len() - 1] = 1;
            }
        }
        batch
    }

    /// The batch on `device`.
    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> CompletionBatch<B> {
        let shape = [2 * self.pairs, self.seq];
        let t = |v: &Vec<i64>| Tensor::from_data(TensorData::new(v.clone(), shape), device);
        CompletionBatch {
            input_ids: t(&self.input_ids),
            attention_mask: t(&self.attention_mask),
            completion_mask: t(&self.completion_mask),
            eos_mask: t(&self.eos_mask),
        }
    }
}

/// The order of pairs for one epoch, as batches of indices: a seeded shuffle; with
/// `group_by_length`, pairs of similar length share a batch (sorted within windows of 50 batches,
/// then the batches shuffled) to cut padding.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let batch_size = batch_size.max(1);
    if group_by_length {
        for window in order.chunks_mut(50 * batch_size) {
            window.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if group_by_length {
        batches.shuffle(&mut rng);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_chosen_first_and_masks_mark_completions() {
        let a = TokenizedPair {
            source: "a".into(),
            prompt_text: String::new(),
            prompt_ids: vec![5, 6],
            chosen_ids: vec![7, 2],
            rejected_ids: vec![8, 9, 2],
        };
        // Pair b's rejected completion was truncated: it does not end with EOS (2).
        let b = TokenizedPair {
            source: "b".into(),
            prompt_text: String::new(),
            prompt_ids: vec![4],
            chosen_ids: vec![2],
            rejected_ids: vec![3, 4],
        };
        let batch = PreferenceBatch::new(&[&a, &b], BatchIds { pad: 0, eos: 2 });
        assert_eq!((batch.pairs, batch.seq), (2, 5));
        #[rustfmt::skip]
        assert_eq!(batch.input_ids, vec![
            5, 6, 7, 2, 0,
            4, 2, 0, 0, 0,
            5, 6, 8, 9, 2,
            4, 3, 4, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(batch.completion_mask, vec![
            0, 0, 1, 1, 0,
            0, 1, 0, 0, 0,
            0, 0, 1, 1, 1,
            0, 1, 1, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(batch.eos_mask, vec![
            0, 0, 0, 1, 0,
            0, 1, 0, 0, 0,
            0, 0, 0, 0, 1,
            0, 0, 0, 0, 0,
        ]);
        assert_eq!(batch.attention_mask.iter().sum::<i64>(), 4 + 2 + 5 + 3);
    }

    #[test]
    fn epochs_cover_every_pair_once_and_grouping_cuts_padding() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 200 + 1).collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len())
                .sum()
        };
        for group in [false, true] {
            let batches = epoch_batches(&lengths, 8, 3, group);
            let mut all: Vec<usize> = batches.concat();
            all.sort();
            assert_eq!(all, (0..1000).collect::<Vec<_>>());
            assert_eq!(batches, epoch_batches(&lengths, 8, 3, group), "seeded");
        }
        let plain = padded(&epoch_batches(&lengths, 8, 3, false));
        let grouped = padded(&epoch_batches(&lengths, 8, 3, true));
        assert!(
            grouped * 10 < plain * 7,
            "grouped {grouped} vs plain {plain}"
        );
    }
}
