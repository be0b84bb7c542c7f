//! log p(target) on burn-flex: one parallel pass per row, and its backward.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use rayon::prelude::*;
use std::sync::Arc;

use super::exp::{scaled_exp, sum_exp};
use super::{AutodiffTensor, FlexKind, cast, flex_kind, tensor};

type Inputs<B> = (Tensor<B, 2>, Tensor<B, 1, Int>);

/// The fused pass when `B` is burn-flex or burn-flex under autodiff and the logits are f32;
/// the inputs back otherwise.
pub(super) fn target_logprobs<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>, Inputs<B>> {
    let kind = match flex_kind::<B>() {
        Some(kind) if logits.dtype() == DType::F32 => kind,
        _ => return Err((logits, targets)),
    };
    let targets = target_ids(&cast(targets.into_primitive()));
    let logits = logits.into_primitive().tensor();
    let out = match kind {
        FlexKind::Plain => cast::<_, B::FloatTensorPrimitive>(forward(&cast(logits), &targets).0),
        FlexKind::Autodiff => cast(tracked(cast(logits), targets)),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[derive(Debug)]
struct TargetLogprobs;

/// Kept for the backward: the logits, the target ids and each row's max and sum of
/// `exp(logit - max)`.
#[derive(Debug, Clone)]
struct Saved {
    logits: FlexTensor,
    targets: Arc<Vec<usize>>,
    stats: Arc<Vec<(f32, f32)>>,
}

impl Backward<Flex, 1> for TargetLogprobs {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| backward(&saved, &grad));
    }
}

fn tracked(logits: AutodiffTensor, targets: Vec<usize>) -> AutodiffTensor {
    match TargetLogprobs
        .prepare::<NoCheckpointing>([logits.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // Kept row-major, so the backward does not copy a transposed view again.
            let logits = logits.primitive.to_contiguous();
            let (logp, stats) = forward(&logits, &targets);
            let saved = Saved {
                logits,
                targets: Arc::new(targets),
                stats: Arc::new(stats),
            };
            prep.finish(saved, logp)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&logits.primitive, &targets).0),
    }
}

fn rows_of(logits: &FlexTensor) -> (FlexTensor, usize, usize) {
    let logits = logits.to_contiguous();
    let shape = logits.layout().shape();
    let (rows, vocab) = (shape[0], shape[1]);
    (logits, rows, vocab)
}

pub(super) fn target_ids(targets: &FlexTensor) -> Vec<usize> {
    let targets = targets.to_contiguous();
    match targets.dtype() {
        DType::I64 => targets
            .storage::<i64>()
            .iter()
            .map(|&t| t as usize)
            .collect(),
        DType::I32 => targets
            .storage::<i32>()
            .iter()
            .map(|&t| t as usize)
            .collect(),
        other => panic!("target ids of type {other:?}"),
    }
}

/// log-probs `[rows]` and each row's (max, Σ exp(logit - max)).
fn forward(logits: &FlexTensor, targets: &[usize]) -> (FlexTensor, Vec<(f32, f32)>) {
    let (logits, rows, vocab) = rows_of(logits);
    let (logp, stats) = log_probs(&logits.storage::<f32>()[..rows * vocab], vocab, targets);
    (tensor(logp, vec![rows]), stats)
}

/// `logit[target] - logsumexp(logits)` of each row of `all` (rows of `vocab`), and each row's
/// (max, Σ exp(logit - max)) for the backward.
pub(super) fn log_probs(
    all: &[f32],
    vocab: usize,
    targets: &[usize],
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let stats: Vec<(f32, f32)> = all
        .par_chunks(vocab)
        .map(|row| {
            // A NaN logit makes the row's max NaN, and so its log-probs (as the tensor ops do).
            let max = row.iter().fold(
                f32::NEG_INFINITY,
                |m, &x| {
                    if x > m || x.is_nan() { x } else { m }
                },
            );
            (max, sum_exp(row, max))
        })
        .collect();
    let logp = stats
        .iter()
        .zip(targets)
        .enumerate()
        .map(|(i, (&(max, sum), &t))| all[i * vocab + t] - (max + sum.ln()))
        .collect();
    (logp, stats)
}

/// d logits `[rows, vocab]` = g · (onehot(target) - softmax(logits)).
fn backward(saved: &Saved, grad: &FlexTensor) -> FlexTensor {
    let (logits, rows, vocab) = rows_of(&saved.logits);
    let grad = grad.to_contiguous();
    let grad = &grad.storage::<f32>()[..rows];
    let all = &logits.storage::<f32>()[..rows * vocab];
    let mut out = vec![0.0f32; rows * vocab];
    out.par_chunks_mut(vocab)
        .zip(all.par_chunks(vocab))
        .enumerate()
        .for_each(|(i, (out, row))| {
            let (max, sum) = saved.stats[i];
            let g = grad[i];
            scaled_exp(row, max, -g / sum, out);
            out[saved.targets[i]] += g;
        });
    tensor(out, vec![rows, vocab])
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use burn::tensor::{Int, Tensor, TensorData};

    const ROWS: usize = 5;
    // Not a multiple of the 16 lanes: the tail is summed apart.
    const VOCAB: usize = 37;

    fn logits() -> Vec<f32> {
        (0..ROWS * VOCAB)
            .map(|i| 30.0 * ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) + (i % 3) as f32)
            .collect()
    }

    const TARGETS: [i64; ROWS] = [0, 36, 5, 16, 17];
    const WEIGHTS: [f32; ROWS] = [1.0, -0.5, 2.0, 0.25, -3.0];

    /// log-probs and d(Σ w·logp)/d logits in f64 on the host: the reference.
    fn expected(logits: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let mut logp = Vec::new();
        let mut grad = Vec::new();
        for (i, row) in logits.chunks(VOCAB).enumerate() {
            let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            logp.push(row[TARGETS[i] as usize] as f64 - lse);
            for (v, &x) in row.iter().enumerate() {
                let onehot = if v == TARGETS[i] as usize { 1.0 } else { 0.0 };
                grad.push(WEIGHTS[i] as f64 * (onehot - (x as f64 - lse).exp()));
            }
        }
        (logp, grad)
    }

    /// The op on backend `A`, from logits laid out row-major or as a transposed view.
    fn run<A: AutodiffBackend>(values: &[f32], transposed: bool) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let leaf = if transposed {
            let mut t = vec![0.0; values.len()];
            for (i, &x) in values.iter().enumerate() {
                t[(i % VOCAB) * ROWS + i / VOCAB] = x;
            }
            Tensor::<A, 2>::from_data(TensorData::new(t, [VOCAB, ROWS]), &device)
        } else {
            Tensor::<A, 2>::from_data(TensorData::new(values.to_vec(), [ROWS, VOCAB]), &device)
        }
        .require_grad();
        let logits = if transposed {
            leaf.clone().transpose()
        } else {
            leaf.clone()
        };
        let targets = Tensor::<A, 1, Int>::from_data(TensorData::from(TARGETS), &device);
        let weights = Tensor::<A, 1>::from_data(TensorData::from(WEIGHTS), &device);
        let logp = crate::fused::target_logprobs(logits, targets);
        let grads = (logp.clone() * weights).sum().backward();
        let mut grad = leaf.grad(&grads).unwrap();
        if transposed {
            grad = grad.transpose();
        }
        (host(logp.inner()), host(grad))
    }

    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn fused_and_composed_log_probs_and_gradients_match_f64() {
        let values = logits();
        let (logp, grad) = expected(&values);
        for transposed in [false, true] {
            let (fused_logp, fused_grad) = run::<Autodiff<Flex>>(&values, transposed);
            assert_close(&fused_logp, &logp, "flex log-probs");
            assert_close(&fused_grad, &grad, "flex gradient");
            let (ref_logp, ref_grad) = run::<Autodiff<NdArray>>(&values, transposed);
            assert_close(&ref_logp, &logp, "ndarray log-probs");
            assert_close(&ref_grad, &grad, "ndarray gradient");
        }
        // Without autodiff (the reference model's pass).
        let device = Default::default();
        let logits =
            Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [ROWS, VOCAB]), &device);
        let targets = Tensor::<Flex, 1, Int>::from_data(TensorData::from(TARGETS), &device);
        assert_close(
            &host(crate::fused::target_logprobs(logits, targets)),
            &logp,
            "flex, no autodiff",
        );
    }

    #[test]
    fn a_nan_logit_gives_its_row_a_nan_log_prob() {
        let mut values = logits();
        values[2 * VOCAB + 9] = f32::NAN;
        let (logp, _) = run::<Autodiff<Flex>>(&values, false);
        for (i, v) in logp.iter().enumerate() {
            assert_eq!(v.is_nan(), i == 2, "row {i}: {v}");
        }
    }
}
