//! The DecPO regularizer and the L1 baseline, on `mlp.up_proj` outputs (SPEC section 3).
//!
//! One feature row z_i is taken per sequence; with Z the `[n, d_ff]` matrix of rows:
//!
//! ```text
//! paper     L = ‖Ẑ Ẑᵀ − I‖²_F        Ẑ: rows L2-normalised (optional) ⇒ Σ_{i≠j} cos²(z_i, z_j)
//!           rows: all 2B sequences or the B chosen ones; position: last real token or the mean
//!           over completion tokens
//! released  L = mean(A Aᵀ − I)        A = |Z| over the even rows of [chosen; rejected] at the
//!           last padded position (no masking), as the authors' script computed it
//! l1        L = mean_i Σ_f |z_if|    at the paper mode's rows and position
//! ```
//!
//! The total objective is mean_pairs L_pref + λ·L; the gradient flows into the policy through z.
//! Rows and Gram matrices are f32 whatever the model computes in (see `decpo_model::precision`).

use burn::tensor::{DType, FloatDType, Int, Tensor, backend::Backend};
use decpo_model::precision::{f32, f32_mask};

use crate::config::{RegPosition, RegRows, Regularizer};

/// The inputs of a regularizer: the captured activations and the batch masks.
pub struct Activations<B: Backend> {
    /// `[2B, T, d_ff]`, chosen rows first.
    pub up_proj: Tensor<B, 3>,
    /// `[2B, T]`, 1 on real tokens.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[2B, T]`, 1 on completion tokens.
    pub completion_mask: Tensor<B, 2, Int>,
}

/// The unweighted regularizer value L (multiply by λ for the objective), a `[1]` tensor.
pub fn regularizer_value<B: Backend>(reg: &Regularizer, a: &Activations<B>) -> Tensor<B, 1> {
    match *reg {
        Regularizer::Paper {
            rows,
            position,
            normalize,
            ..
        } => {
            let z = feature_rows(a, rows, position);
            let z = if normalize { l2_normalize(z) } else { z };
            let n = z.dims()[0];
            let gram = z.clone().matmul(z.transpose());
            let eye = f32(Tensor::<B, 2>::eye(n, &gram.device()));
            (gram - eye).powi_scalar(2).sum()
        }
        Regularizer::Released { .. } => {
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
        Regularizer::L1 { rows, position, .. } => {
            let z = feature_rows(a, rows, position);
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

/// The `up_proj` row of each sequence at its last real token, `[rows, d_ff]`.
pub fn last_token_rows<B: Backend>(a: &Activations<B>) -> Tensor<B, 2> {
    feature_rows(a, RegRows::All, RegPosition::Last)
}

/// One row per selected sequence, `[n, d_ff]`.
fn feature_rows<B: Backend>(
    a: &Activations<B>,
    rows: RegRows,
    position: RegPosition,
) -> Tensor<B, 2> {
    let [n_rows, seq, _] = a.up_proj.dims();
    let weights = match position {
        // One-hot on the last real token: position sum(mask) − 1.
        RegPosition::Last => {
            let last = a.attention_mask.clone().sum_dim(1) - 1;
            let positions =
                Tensor::<B, 1, Int>::arange(0..seq as i64, &last.device()).unsqueeze::<2>();
            positions
                .expand([n_rows, seq])
                .equal(last.expand([n_rows, seq]))
                .float()
                .cast(FloatDType::F32)
        }
        RegPosition::Mean => {
            let m = f32_mask(a.completion_mask.clone());
            let count = m.clone().sum_dim(1).clamp_min(1.0);
            m / count
        }
    };
    let z = (f32(a.up_proj.clone()) * weights.unsqueeze_dim::<3>(2))
        .sum_dim(1)
        .squeeze_dim::<2>(1);
    match rows {
        RegRows::All => z,
        RegRows::Chosen => z.narrow(0, 0, n_rows / 2),
    }
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

    type B = burn::backend::NdArray<f32>;

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
            attention_mask: Tensor::from_data(
                TensorData::new(vec![1i64, 0, 1, 1, 1, 1, 1, 1], [4, 2]),
                &d,
            ),
            completion_mask: Tensor::from_data(
                TensorData::new(vec![1i64, 0, 0, 1, 0, 1, 1, 1], [4, 2]),
                &d,
            ),
        }
    }

    fn value(reg: Regularizer) -> f32 {
        regularizer_value(&reg, &activations())
            .into_data()
            .to_vec::<f32>()
            .unwrap()[0]
    }

    #[test]
    fn released_mode_reads_the_padded_last_position_of_even_rows() {
        // Rows 0 and 2 at position 1: A = |[[1, -2], [0, 3]]|, AAᵀ − I = [[4, 6], [6, 8]], mean 6.
        assert_eq!(
            value(Regularizer::Released {
                lambda: 1.0,
                layer: 0
            }),
            6.0
        );
    }

    #[test]
    fn paper_mode_uses_the_last_real_token() {
        // Chosen rows at their last real token: [3, 4] (position 0) and [0, 1]; cos = 4/5, and
        // ‖ẐẐᵀ − I‖² counts it twice.
        let v = value(Regularizer::Paper {
            lambda: 1.0,
            layer: 0,
            rows: RegRows::Chosen,
            position: RegPosition::Last,
            normalize: true,
        });
        assert!((v - 2.0 * 0.64).abs() < 1e-6, "{v}");
        // Mean over completion tokens, raw: rows [3, 4] and [0, 1]: Gram [[25, 4], [4, 1]] − I.
        let v = value(Regularizer::Paper {
            lambda: 1.0,
            layer: 0,
            rows: RegRows::Chosen,
            position: RegPosition::Mean,
            normalize: false,
        });
        assert_eq!(v, 24.0 * 24.0 + 2.0 * 16.0);
        // L1 over all rows at the last real token: 7, 1, 3 and 2 → mean 13/4.
        let v = value(Regularizer::L1 {
            lambda: 1.0,
            layer: 0,
            rows: RegRows::All,
            position: RegPosition::Last,
        });
        assert_eq!(v, 13.0 / 4.0);
    }
}
