//! Prefix sharing for preference pairs: a pair's chosen and rejected sequences start with the
//! same prompt, so the prompt goes through the model once per pair instead of twice.
//!
//! A pair becomes one packed row: the chosen sequence, then the rejected sequence's tokens after
//! the prefix the two share. Every token keeps the position it has in its own sequence (RoPE),
//! and a rejected token attends to the shared prefix and to the rejected tokens before it, never
//! to the chosen completion; so each real token's hidden state is the one the padded two-row
//! forward gives (up to float rounding). Gathering the packed rows back ([`SharedPrompts::unpack`])
//! gives `[2B, T, ·]` tensors that the rest of a step reads as before; the gather's backward adds
//! both completions' gradients into the shared prefix.
//!
//! ```text
//! padded:  chosen   p p p c c c c .        packed:  p p p c c c c r r .
//!          rejected p p p r r . . .        position 0 1 2 3 4 5 6 3 4 .
//! ```
//!
//! Only real tokens are reproduced: at a padding position the unpacked tensors hold a copy of the
//! row's last real token (the padded forward computes a padding token there instead).

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

use crate::logprobs::CompletionBatch;

/// The packed layout of a preference batch (rows `0..B` chosen, `B..2B` rejected, right-padded to
/// `T`): `B` rows of `len` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPrompts {
    pairs: usize,
    seq: usize,
    /// Tokens in a packed row.
    pub len: usize,
    /// `[B, len]` token ids (0 on padding).
    ids: Vec<i64>,
    /// `[B, len]` each token's position in its own sequence.
    pub positions: Vec<usize>,
    /// `[B, len, len]`, true where a query must not attend to a key.
    forbidden: Vec<bool>,
    /// `[2B * T]`: the flat packed index (`pair * len + column`) of each padded row's token.
    index: Vec<i64>,
}

impl SharedPrompts {
    /// The packed layout of `batch`, or `None` when it would not run fewer token columns than the
    /// padded batch (`B·len ≥ 2B·T`) or the batch is not right-padded pairs.
    pub fn plan<B: Backend>(batch: &CompletionBatch<B>) -> Option<Self> {
        let [rows, seq] = batch.input_ids.dims();
        let host = |t: &Tensor<B, 2, Int>| t.clone().into_data().iter::<i64>().collect::<Vec<_>>();
        Self::plan_host(
            &host(&batch.input_ids),
            &host(&batch.attention_mask),
            &host(&batch.completion_mask),
            rows,
            seq,
        )
    }

    /// [`SharedPrompts::plan`] from the batch's `[rows, seq]` ids and masks on the host.
    pub fn plan_host(
        ids: &[i64],
        attention: &[i64],
        completion: &[i64],
        rows: usize,
        seq: usize,
    ) -> Option<Self> {
        if rows == 0 || !rows.is_multiple_of(2) || seq == 0 {
            return None;
        }
        let pairs = rows / 2;
        let row = |v: &'_ [i64], r: usize| -> Vec<i64> { v[r * seq..(r + 1) * seq].to_vec() };
        // Real tokens of a right-padded row (None when it is not right-padded or empty).
        let real = |r: usize| {
            let mask = row(attention, r);
            let n = mask.iter().take_while(|&&m| m != 0).count();
            (n > 0 && mask[n..].iter().all(|&m| m == 0)).then_some(n)
        };
        // Per pair: chosen length, rejected length, shared prefix.
        let mut spans = Vec::with_capacity(pairs);
        for i in 0..pairs {
            let (c, r) = (i, pairs + i);
            let (len_c, len_r) = (real(c)?, real(r)?);
            let (ids_c, ids_r) = (row(ids, c), row(ids, r));
            let (comp_c, comp_r) = (row(completion, c), row(completion, r));
            let shared = (0..len_c.min(len_r))
                .take_while(|&t| comp_c[t] == 0 && comp_r[t] == 0 && ids_c[t] == ids_r[t])
                .count();
            spans.push((len_c, len_r, shared));
        }
        let len = spans.iter().map(|(c, r, s)| c + r - s).max()?;
        if len >= 2 * seq {
            return None;
        }

        let mut out = Self {
            pairs,
            seq,
            len,
            ids: vec![0; pairs * len],
            positions: vec![0; pairs * len],
            forbidden: vec![true; pairs * len * len],
            index: vec![0; rows * seq],
        };
        for (i, &(len_c, len_r, shared)) in spans.iter().enumerate() {
            let (ids_c, ids_r) = (row(ids, i), row(ids, pairs + i));
            let filled = len_c + len_r - shared;
            let base = i * len;
            let queries = out.forbidden[base * len..(base + len) * len].chunks_mut(len);
            for (j, forbidden) in queries.enumerate() {
                let allowed = |k: usize| -> bool {
                    if j < len_c {
                        k <= j
                    } else if j < filled {
                        k < shared || (len_c..=j).contains(&k)
                    } else {
                        // Padding sees itself alone, so no softmax row is empty.
                        k == j
                    }
                };
                let (id, position) = if j < len_c {
                    (ids_c[j], j)
                } else if j < filled {
                    let u = shared + j - len_c;
                    (ids_r[u], u)
                } else {
                    (0, 0)
                };
                out.ids[base + j] = id;
                out.positions[base + j] = position;
                for (k, f) in forbidden.iter_mut().enumerate() {
                    *f = !allowed(k);
                }
            }
            // Where each padded token is in the packed row; padding copies the last real token.
            let rejected = |u: usize| if u < shared { u } else { len_c + u - shared };
            for u in 0..seq {
                out.index[i * seq + u] = (base + u.min(len_c - 1)) as i64;
                out.index[(pairs + i) * seq + u] = (base + rejected(u.min(len_r - 1))) as i64;
            }
        }
        Some(out)
    }

    /// Token ids `[B, len]`.
    pub fn input_ids<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(self.ids.clone(), [self.pairs, self.len]),
            device,
        )
    }

    /// The attention mask `[B, 1, len, len]`, true where attention is forbidden.
    pub fn forbidden<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4, Bool> {
        Tensor::from_data(
            TensorData::new(self.forbidden.clone(), [self.pairs, 1, self.len, self.len]),
            device,
        )
    }

    /// Packed rows `[B, len, width]` back to the padded batch's `[2B, T, width]`.
    pub fn unpack<B: Backend>(&self, packed: Tensor<B, 3>) -> Tensor<B, 3> {
        let [pairs, len, width] = packed.dims();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(self.index.clone(), [self.index.len()]),
            &packed.device(),
        );
        packed
            .reshape([pairs * len, width])
            .select(0, index)
            .reshape([2 * self.pairs, self.seq, width])
    }

    /// Token columns the packed forward runs, and the padded batch's.
    pub fn columns(&self) -> (usize, usize) {
        (self.pairs * self.len, 2 * self.pairs * self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two pairs, T 6. Pair 0: prompt [1 2 3], chosen [4 5], rejected [6]; pair 1: prompt [7],
    // chosen [8 9 10 11 12], rejected [13 14 15 16].
    fn plan() -> SharedPrompts {
        #[rustfmt::skip]
        let ids = [
            1, 2, 3, 4, 5, 0,
            7, 8, 9, 10, 11, 12,
            1, 2, 3, 6, 0, 0,
            7, 13, 14, 15, 16, 0,
        ];
        #[rustfmt::skip]
        let attention = [
            1, 1, 1, 1, 1, 0,
            1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 0, 0,
            1, 1, 1, 1, 1, 0,
        ];
        #[rustfmt::skip]
        let completion = [
            0, 0, 0, 1, 1, 0,
            0, 1, 1, 1, 1, 1,
            0, 0, 0, 1, 0, 0,
            0, 1, 1, 1, 1, 0,
        ];
        SharedPrompts::plan_host(&ids, &attention, &completion, 4, 6).unwrap()
    }

    #[test]
    fn rejected_tokens_follow_the_chosen_row_at_their_own_positions() {
        let p = plan();
        // Pair 1 is the longest: 6 chosen + 4 rejected tokens after the one-token prompt.
        assert_eq!(p.len, 10);
        assert_eq!(p.columns(), (20, 24));
        assert_eq!(&p.ids[..10], &[1, 2, 3, 4, 5, 6, 0, 0, 0, 0]);
        assert_eq!(&p.positions[..10], &[0, 1, 2, 3, 4, 3, 0, 0, 0, 0]);
        assert_eq!(&p.ids[10..], &[7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(&p.positions[10..], &[0, 1, 2, 3, 4, 5, 1, 2, 3, 4]);
    }

    #[test]
    fn rejected_tokens_see_the_prompt_and_themselves_only() {
        let p = plan();
        let sees = |pair: usize, q: usize| -> Vec<usize> {
            let row = &p.forbidden[(pair * p.len + q) * p.len..][..p.len];
            (0..p.len).filter(|&k| !row[k]).collect()
        };
        assert_eq!(sees(0, 4), vec![0, 1, 2, 3, 4]);
        assert_eq!(sees(0, 5), vec![0, 1, 2, 5]);
        assert_eq!(sees(0, 7), vec![7]);
        assert_eq!(sees(1, 8), vec![0, 6, 7, 8]);
    }

    #[test]
    fn unpacking_puts_every_real_token_back_and_padding_on_the_last() {
        let p = plan();
        let (l, t) = (p.len as i64, 6);
        assert_eq!(&p.index[..t], &[0, 1, 2, 3, 4, 4]);
        assert_eq!(&p.index[2 * t..3 * t], &[0, 1, 2, 5, 5, 5]);
        let pair1: Vec<i64> = [0, 6, 7, 8, 9, 9].iter().map(|c| l + c).collect();
        assert_eq!(&p.index[3 * t..], &pair1[..]);
    }

    #[test]
    fn no_plan_when_packing_saves_nothing_or_rows_are_not_right_padded() {
        // Nothing shared and no padding: 2T columns either way.
        let ids = [1, 2, 3, 4];
        let ones = [1; 4];
        let completion = [0, 1, 0, 1];
        assert_eq!(
            SharedPrompts::plan_host(&ids, &ones, &completion, 2, 2),
            None
        );
        // Left padding.
        let attention = [0, 1, 1, 1];
        assert_eq!(
            SharedPrompts::plan_host(&[0, 1, 1, 2], &attention, &completion, 2, 2),
            None
        );
    }
}
