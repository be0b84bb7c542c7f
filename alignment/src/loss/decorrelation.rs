//! The DecPO regularizer and the L1 baseline, on `mlp.up_proj` outputs (SPEC section 3).
//!
//! One feature row z_i is taken per sequence at the regularizer's *site* (the last prompt token,
//! the mean of the completion, its last token, or the final EOS); with Z the `[n, d_ff]` matrix
//! of rows:
//!
//! ```text
//! paper     L = ‖Ẑ Ẑᵀ − I‖²_F        Ẑ: rows L2-normalised (optional) ⇒ Σ_{i≠j} cos²(z_i, z_j)
//!           rows: all 2B sequences or the B chosen ones (prompt-last: one per pair)
//! released  L = mean(A Aᵀ − I)        A = |Z| over the even rows of [chosen; rejected] at the
//!           last padded position (no masking), as the authors' script computed it
//! l1        L = mean_i Σ_f |z_if|    at the paper mode's rows and site
//! ```
//!
//! The total objective is mean_pairs L_pref + λ·L; the gradient flows into the policy through z.
//! Rows and Gram matrices are f32 whatever the model computes in (see `decpo_model::precision`).
//! Positions are read from the masks, so rows may be padded on either side.

use burn::tensor::{DType, FloatDType, Int, Tensor, backend::Backend};
use decpo_model::precision::{f32, f32_mask};

use crate::config::{RegMode, RegRows, Regularizer, Site};

/// The inputs of a regularizer: the captured activations and the batch masks.
pub struct Activations<B: Backend> {
    /// `[2B, T, d_ff]`, chosen rows first.
    pub up_proj: Tensor<B, 3>,
    /// `[2B, T]`, 1 on real tokens.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[2B, T]`, 1 on completion tokens (the final EOS included).
    pub completion_mask: Tensor<B, 2, Int>,
    /// `[2B, T]`, 1 on a completion's final EOS.
    pub eos_mask: Tensor<B, 2, Int>,
}

/// The unweighted regularizer value L (multiply by λ for the objective), a `[1]` tensor.
pub fn regularizer_value<B: Backend>(reg: &Regularizer, a: &Activations<B>) -> Tensor<B, 1> {
    match reg.mode {
        RegMode::Paper => {
            let z = site_rows(a, reg.site, reg.rows);
            let z = if reg.normalize { l2_normalize(z) } else { z };
            let n = z.dims()[0];
            let gram = z.clone().matmul(z.transpose());
            let eye = f32(Tensor::<B, 2>::eye(n, &gram.device()));
            (gram - eye).powi_scalar(2).sum()
        }
        RegMode::Released => {
            let [rows, seq, _] = a.up_proj.dims();
            // Position −1 of the padded batch, then rows 0, 2, 4, … of [chosen; rejected].
            let last = f32(a.up_proj.clone().narrow(1, seq - 1, 1).squeeze_dim::<2>(1));
            let even = Tensor::<B, 1, Int>::arange_step(0..rows as i64, 2, &last.device());
            let abs = last.select(0, even).abs();
            let n = abs.dims()[0];
            let gram = abs.clone().matmul(abs.transpose());
            let eye = f32(Tensor::<B, 2>::eye(n, &gram.device()));
            (gram - eye).mean()
        }
        RegMode::L1 => {
            let z = site_rows(a, reg.site, reg.rows);
            z.abs().sum_dim(1).mean()
        }
    }
}

/// Feature decorrelation of rows `z` `[n, d]` (SPEC section 4):
/// `FD = 1 − mean_{i≠j} cos(z_i, z_j)`; higher is more decorrelated. `[1]` f32; 1 when n < 2.
pub fn feature_decorrelation<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = z.dims()[0];
    let device = z.device();
    if n < 2 {
        return Tensor::ones([1], (&device, DType::F32));
    }
    let z = l2_normalize(f32(z));
    let gram = z.clone().matmul(z.transpose());
    let off_diagonal = gram.clone().sum() - gram.mul(f32(Tensor::eye(n, &device))).sum();
    off_diagonal
        .div_scalar((n * (n - 1)) as f64)
        .neg()
        .add_scalar(1.0)
}

/// The `up_proj` row of each sequence `[rows, T, d_ff]` at its last real token, `[rows, d_ff]`
/// (f32): the site of a batch of prompts.
pub fn last_token_rows<B: Backend>(
    up_proj: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    rows_at(up_proj, last_of(attention_mask))
}

/// One feature row per selected sequence at `site`, `[n, d_ff]` f32: all 2B rows or the B
/// chosen ones; `prompt-last` always gives the B chosen rows (a pair's rejected row has the same
/// prompt, so the same row). A sequence without a token at its site (an empty prompt, a
/// completion of only EOS for `completion-last`/`completion-mean`) gives a zero row.
pub fn site_rows<B: Backend>(a: &Activations<B>, site: Site, rows: RegRows) -> Tensor<B, 2> {
    let completion = || a.completion_mask.clone() - a.eos_mask.clone();
    let weights = match site {
        Site::PromptLast => last_of(a.attention_mask.clone() - a.completion_mask.clone()),
        Site::CompletionLast => last_of(completion()),
        Site::Eos => last_of(a.attention_mask.clone()),
        Site::CompletionMean => {
            let m = f32_mask(completion());
            let count = m.clone().sum_dim(1).clamp_min(1.0);
            m / count
        }
    };
    let z = rows_at(a.up_proj.clone(), weights);
    let n_rows = z.dims()[0];
    match (site, rows) {
        (Site::PromptLast, _) | (_, RegRows::Chosen) => z.narrow(0, 0, n_rows / 2),
        (_, RegRows::All) => z,
    }
}

/// Σ_t weights[r, t]·up_proj[r, t, :], `[rows, d_ff]` f32.
fn rows_at<B: Backend>(up_proj: Tensor<B, 3>, weights: Tensor<B, 2>) -> Tensor<B, 2> {
    (f32(up_proj) * weights.unsqueeze_dim::<3>(2))
        .sum_dim(1)
        .squeeze_dim::<2>(1)
}

/// `[rows, T]` f32, one-hot on the last position where `mask` is 1 (all zero where it has none).
fn last_of<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [rows, seq] = mask.dims();
    let position = Tensor::<B, 1, Int>::arange(1..seq as i64 + 1, &mask.device())
        .unsqueeze::<2>()
        .expand([rows, seq]);
    let last = (mask * position.clone()).max_dim(1).expand([rows, seq]);
    position.equal(last).float().cast(FloatDType::F32)
}

/// Each row divided by its L2 norm (a zero row stays zero).
fn l2_normalize<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = z.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    z / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use decpo_datasets::{BatchIds, PreferenceBatch, TokenizedPair};

    type B = burn::backend::NdArray<f32>;

    fn ints(v: Vec<i64>, shape: [usize; 2]) -> Tensor<B, 2, Int> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    /// 4 rows x 2 positions x 2 features; row 0 is padded at position 1.
    fn activations() -> Activations<B> {
        let d = Default::default();
        #[rustfmt::skip]
        let z = vec![
            3.0, 4.0,   1.0, -2.0,  // row 0 (chosen 0): real, pad
            1.0, 0.0,   0.0, 1.0,   // row 1 (chosen 1)
            2.0, 2.0,   0.0, 3.0,   // row 2 (rejected 0)
            5.0, 5.0,   1.0, 1.0,   // row 3 (rejected 1)
        ];
        Activations {
            up_proj: Tensor::from_data(TensorData::new(z, [4, 2, 2]), &d),
            attention_mask: ints(vec![1, 0, 1, 1, 1, 1, 1, 1], [4, 2]),
            completion_mask: ints(vec![1, 0, 0, 1, 0, 1, 1, 1], [4, 2]),
            eos_mask: ints(vec![0; 8], [4, 2]),
        }
    }

    fn value(reg: Regularizer) -> f32 {
        regularizer_value(&reg, &activations())
            .into_data()
            .to_vec::<f32>()
            .unwrap()[0]
    }

    fn reg(mode: RegMode, site: Site, rows: RegRows, normalize: bool) -> Regularizer {
        Regularizer {
            site,
            rows,
            normalize,
            lambda: 1.0,
            ..Regularizer::new(mode, 0)
        }
    }

    #[test]
    fn released_mode_reads_the_padded_last_position_of_even_rows() {
        // Rows 0 and 2 at position 1: A = |[[1, -2], [0, 3]]|, AAᵀ − I = [[4, 6], [6, 8]], mean 6.
        let released = Regularizer::new(RegMode::Released, 0);
        assert_eq!(value(released), 6.0);
    }

    #[test]
    fn paper_mode_and_l1_read_their_site() {
        // Chosen rows at their last real token: [3, 4] (position 0) and [0, 1]; cos = 4/5, and
        // ‖ẐẐᵀ − I‖² counts it twice.
        let v = value(reg(RegMode::Paper, Site::Eos, RegRows::Chosen, true));
        assert!((v - 2.0 * 0.64).abs() < 1e-6, "{v}");
        // Mean over completion tokens, raw: rows [3, 4] and [0, 1]: Gram [[25, 4], [4, 1]] − I.
        let v = value(reg(
            RegMode::Paper,
            Site::CompletionMean,
            RegRows::Chosen,
            false,
        ));
        assert_eq!(v, 24.0 * 24.0 + 2.0 * 16.0);
        // L1 over all rows at the last real token: 7, 1, 3 and 2 → mean 13/4.
        let v = value(reg(RegMode::L1, Site::Eos, RegRows::All, true));
        assert_eq!(v, 13.0 / 4.0);
    }

    /// The row each site picks, as (row, position) pairs read back from activations that hold
    /// `100·row + position` in feature 0 (and 1 in feature 1, so no row is zero).
    fn picked(a: &Activations<B>, site: Site, rows: RegRows) -> Vec<f32> {
        let z = site_rows(a, site, rows);
        z.narrow(1, 0, 1).into_data().to_vec::<f32>().unwrap()
    }

    fn position_activations(rows: usize, seq: usize) -> Tensor<B, 3> {
        let v: Vec<f32> = (0..rows * seq)
            .flat_map(|i| [(100 * (i / seq) + i % seq) as f32, 1.0])
            .collect();
        Tensor::from_data(TensorData::new(v, [rows, seq, 2]), &Default::default())
    }

    #[test]
    fn each_site_picks_its_token_in_a_real_batch() {
        // Pair 0: prompt [5, 6], chosen [7, 2] (2 = EOS), rejected [8, 9, 2].
        // Pair 1: prompt [4], chosen [3, 2], rejected [3, 4] (truncated: no EOS).
        let pair = |s: &str, p: Vec<u32>, c: Vec<u32>, r: Vec<u32>| TokenizedPair {
            source: s.into(),
            prompt_text: String::new(),
            prompt_ids: p,
            chosen_ids: c,
            rejected_ids: r,
        };
        let a = pair("a", vec![5, 6], vec![7, 2], vec![8, 9, 2]);
        let b = pair("b", vec![4], vec![3, 2], vec![3, 4]);
        let batch = PreferenceBatch::new(&[&a, &b], BatchIds { pad: 0, eos: 2 })
            .to_tensors::<B>(&Default::default());
        let acts = Activations {
            up_proj: position_activations(4, 5),
            attention_mask: batch.attention_mask,
            completion_mask: batch.completion_mask,
            eos_mask: batch.eos_mask,
        };
        // Rows: 0 = a chosen, 1 = b chosen, 2 = a rejected, 3 = b rejected.
        assert_eq!(
            picked(&acts, Site::Eos, RegRows::All),
            [3.0, 102.0, 204.0, 302.0]
        );
        assert_eq!(
            picked(&acts, Site::CompletionLast, RegRows::All),
            [2.0, 101.0, 203.0, 302.0]
        );
        assert_eq!(picked(&acts, Site::PromptLast, RegRows::All), [1.0, 100.0]);
        assert_eq!(
            picked(&acts, Site::CompletionMean, RegRows::All),
            [2.0, 101.0, 202.5, 301.5]
        );
        assert_eq!(picked(&acts, Site::Eos, RegRows::Chosen), [3.0, 102.0]);
    }

    #[test]
    fn sites_follow_the_masks_under_left_padding() {
        // Two rows, each left-padded by two: pad pad p p c c EOS.
        let acts = Activations {
            up_proj: position_activations(2, 7),
            attention_mask: ints(vec![0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1], [2, 7]),
            completion_mask: ints(vec![0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1], [2, 7]),
            eos_mask: ints(vec![0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], [2, 7]),
        };
        assert_eq!(picked(&acts, Site::Eos, RegRows::All), [6.0, 106.0]);
        assert_eq!(
            picked(&acts, Site::CompletionLast, RegRows::All),
            [5.0, 105.0]
        );
        assert_eq!(
            picked(&acts, Site::CompletionMean, RegRows::All),
            [4.5, 104.5]
        );
        assert_eq!(picked(&acts, Site::PromptLast, RegRows::All), [3.0]);
    }
}
