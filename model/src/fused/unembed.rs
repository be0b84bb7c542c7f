//! The completion log-probs straight from the final hidden states on burn-flex: the logits
//! `h · W` by one GEMM on every thread into a reused buffer ([`Pooled`]), then the per-row pass
//! of [`super::logprobs`]. d logit = g · (onehot - softmax) for each row's gradient g, so
//! dh = d logits · Wᵀ and dW = hᵀ · d logits. burn-flex's matmul zero-fills each output and
//! copies it once more to align it, and at this size every chunk's logits and their gradient
//! were fresh pages the kernel zeroed.
//!
//! When the weight takes no gradient (LoRA, a frozen or LoRA-off reference under autodiff),
//! nothing but dh is wanted, and it is linear in g row by row: the forward forms
//! (onehot - softmax) · Wᵀ per row while the logits are at hand and keeps that `[rows, width]`
//! for the backward, which only scales it; the `[rows, vocab]` logits go back to the pool at
//! once. Same products, a vocabulary-sized buffer less per chunk held until the backward.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use rayon::prelude::*;
use std::sync::Arc;

use super::exp::scaled_exp_in_place;
use super::gemm::{Mat, MatMut, matmul_parallel, product, product_values};
use super::logprobs::{log_probs, target_ids};
use super::pool::Pooled;
use super::{AutodiffTensor, FlexKind, cast, flex_kind, tensor};

type Inputs<B> = (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 1, Int>);

/// The fused pass when `B` is burn-flex (with or without autodiff) and both operands are f32;
/// the inputs back otherwise.
pub(super) fn unembed_logprobs<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>, Inputs<B>> {
    let kind = match flex_kind::<B>() {
        Some(kind) if hidden.dtype() == DType::F32 && weight.dtype() == DType::F32 => kind,
        _ => return Err((hidden, weight, targets)),
    };
    let targets = target_ids(&cast(targets.into_primitive()));
    let (hidden, weight) = (
        hidden.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let out: B::FloatTensorPrimitive = match kind {
        FlexKind::Plain => {
            let hidden: FlexTensor = cast(hidden);
            cast(forward(&hidden.to_contiguous(), &cast(weight), &targets).0)
        }
        FlexKind::Autodiff => cast(tracked(cast(hidden), cast(weight), targets)),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[derive(Debug)]
struct Unembed;

/// Kept for the backward.
#[derive(Debug, Clone)]
enum Saved {
    /// Either operand may want its gradient.
    Logits(Box<Kept>),
    /// Only the hidden states want theirs: d hidden per unit of each row's gradient,
    /// (onehot - softmax) · Wᵀ, `[rows, width]` row-major.
    Frozen {
        direction: Arc<Vec<f32>>,
        width: usize,
    },
}

/// Both operands (the hidden states contiguous, the weight as given), the logits, the target
/// ids and each row's max and Σ exp(logit - max).
#[derive(Debug, Clone)]
struct Kept {
    hidden: FlexTensor,
    weight: FlexTensor,
    logits: Arc<Pooled>,
    targets: Arc<Vec<usize>>,
    stats: Arc<Vec<(f32, f32)>>,
}

impl Backward<Flex, 2> for Unembed {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [node_hidden, node_weight] = ops.parents;
        let want = [node_hidden.is_some(), node_weight.is_some()];
        let [d_hidden, d_weight] = match ops.state {
            Saved::Logits(kept) => {
                let Kept {
                    hidden,
                    weight,
                    logits,
                    targets,
                    stats,
                } = *kept;
                let logits = Arc::try_unwrap(logits).unwrap_or_else(|shared| {
                    let mut copy = Pooled::take(shared.len());
                    copy.copy_from_slice(&shared);
                    copy
                });
                let logits = Logits {
                    values: logits,
                    targets: &targets,
                    stats: &stats,
                };
                backward(&hidden, &weight, logits, grad.storage::<f32>(), want)
            }
            Saved::Frozen { direction, width } => {
                let mut d = Arc::unwrap_or_clone(direction);
                let grad = grad.storage::<f32>();
                d.par_chunks_mut(width)
                    .zip(grad.par_iter())
                    .for_each(|(row, &g)| row.iter_mut().for_each(|x| *x *= g));
                [Some(tensor(d, vec![grad.len(), width])), None]
            }
        };
        for (node, grad) in [(node_hidden, d_hidden), (node_weight, d_weight)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

fn tracked(hidden: AutodiffTensor, weight: AutodiffTensor, targets: Vec<usize>) -> AutodiffTensor {
    let frozen = weight.node.requirement.is_none();
    let nodes = [hidden.node.clone(), weight.node.clone()];
    let h = hidden.primitive.to_contiguous();
    match Unembed
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (logp, logits, stats) = forward(&h, &weight.primitive, &targets);
            let saved = if frozen {
                let logits = Logits {
                    values: logits,
                    targets: &targets,
                    stats: &stats,
                };
                let width = h.layout().shape()[1];
                let direction = logits.unit_gradient(Mat::of(&weight.primitive));
                Saved::Frozen {
                    direction: Arc::new(direction),
                    width,
                }
            } else {
                Saved::Logits(Box::new(Kept {
                    hidden: h,
                    weight: weight.primitive,
                    logits: Arc::new(logits),
                    targets: Arc::new(targets),
                    stats: Arc::new(stats),
                }))
            };
            prep.finish(saved, logp)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&h, &weight.primitive, &targets).0),
    }
}

/// The log-probs `[rows]`, the logits `[rows, vocab]` and each row's (max, Σ exp). `hidden`
/// contiguous `[rows, width]`, `weight` `[width, vocab]` in any layout.
fn forward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    targets: &[usize],
) -> (FlexTensor, Pooled, Vec<(f32, f32)>) {
    let (h, w) = (Mat::of(hidden), Mat::of(weight));
    let (rows, vocab) = (h.rows(), w.cols());
    assert_eq!(targets.len(), rows, "one target per row");
    let mut logits = Pooled::take(rows * vocab);
    // SAFETY: both operands are live tensors' views; `logits` is this call's own.
    unsafe {
        matmul_parallel(
            MatMut::rows_of(logits.as_mut_ptr(), 0, rows, vocab, vocab),
            false,
            h,
            w,
        )
    };
    let (logp, stats) = log_probs(&logits, vocab, targets);
    (tensor(logp, vec![rows]), logits, stats)
}

/// One chunk's logits `[rows, vocab]` with what the forward learnt of them.
struct Logits<'a> {
    values: Pooled,
    targets: &'a [usize],
    stats: &'a [(f32, f32)],
}

impl Logits<'_> {
    /// Overwrites the logits with their gradient, g_i · (onehot - softmax) on row i.
    fn into_gradient(mut self, grad: impl Fn(usize) -> f32 + Sync) -> Pooled {
        let vocab = self.values.len() / self.targets.len();
        let (targets, stats) = (self.targets, self.stats);
        self.values
            .par_chunks_mut(vocab)
            .enumerate()
            .for_each(|(i, row)| {
                let ((max, sum), g) = (stats[i], grad(i));
                scaled_exp_in_place(row, max, -g / sum);
                row[targets[i]] += g;
            });
        self.values
    }

    /// (onehot - softmax) · Wᵀ for `weight` `[width, vocab]`: `[rows, width]` row-major.
    fn unit_gradient(self, weight: Mat) -> Vec<f32> {
        let rows = self.targets.len();
        let d = self.into_gradient(|_| 1.0);
        let d = Mat::rows_of(d.as_ptr(), 0, rows, weight.cols(), weight.cols());
        product_values(d, weight.t())
    }
}

/// d hidden `[rows, width]` and d weight `[width, vocab]`, those `want` asks for, from the
/// gradient of the log-probs `[rows]`.
fn backward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    logits: Logits,
    grad: &[f32],
    want: [bool; 2],
) -> [Option<FlexTensor>; 2] {
    let (h, w) = (Mat::of(hidden), Mat::of(weight));
    let (rows, vocab) = (h.rows(), w.cols());
    // The logits' last use: their gradient overwrites them.
    let d_logits = logits.into_gradient(|i| grad[i]);
    let d = Mat::rows_of(d_logits.as_ptr(), 0, rows, vocab, vocab);
    let [want_hidden, want_weight] = want;
    [
        want_hidden.then(|| product(d, w.t())),
        want_weight.then(|| product(h.t(), d)),
    ]
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Int, Tensor, TensorData};

    const ROWS: usize = 6;
    const WIDTH: usize = 5;
    const VOCAB: usize = 37;

    fn values(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 * 6.0 - 3.0)
            .collect()
    }

    /// Log-probs and the gradients of hidden and weight for Σ w·logp on backend `A`, the weight
    /// given as the transposed view of `[vocab, width]` (as a tied embedding is); with `frozen`
    /// the weight takes no gradient (LoRA) and only the first two come back.
    fn run<A: AutodiffBackend>(frozen: bool) -> Vec<Vec<f32>> {
        let device = Default::default();
        let leaf = |seed, shape: [usize; 2]| {
            let n = shape[0] * shape[1];
            Tensor::<A, 2>::from_data(TensorData::new(values(seed, n), shape), &device)
        };
        let hidden = leaf(1, [ROWS, WIDTH]).require_grad();
        let embed = leaf(2, [VOCAB, WIDTH]);
        let embed = if frozen { embed } else { embed.require_grad() };
        let targets: Vec<i64> = (0..ROWS).map(|i| (i * 11 % VOCAB) as i64).collect();
        let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(targets, [ROWS]), &device);
        let weight = embed.clone().transpose();
        let logits = || hidden.clone().matmul(weight.clone());
        let logp = super::super::unembed_logprobs(hidden.clone(), weight.clone(), targets, logits);
        let w = Tensor::<A, 1>::from_data(TensorData::new(values(3, ROWS), [ROWS]), &device);
        let grads = (logp.clone() * w).sum().backward();
        let host = |t: Tensor<A::InnerBackend, 2>| t.into_data().into_vec::<f32>().unwrap();
        let mut out = vec![
            logp.inner().into_data().into_vec::<f32>().unwrap(),
            host(hidden.grad(&grads).unwrap()),
        ];
        if frozen {
            assert!(
                embed.grad(&grads).is_none(),
                "a frozen weight got a gradient"
            );
        } else {
            out.push(host(embed.grad(&grads).unwrap()));
        }
        out
    }

    fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>]) {
        assert_eq!(got.len(), want.len());
        for ((name, got), want) in ["logp", "d hidden", "d weight"].iter().zip(got).zip(want) {
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-5 * w.abs().max(1.0),
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn fused_unembedding_log_probs_and_gradients_match_the_tensor_ops() {
        let got = run::<Autodiff<Flex>>(false);
        // Again, now on buffers the pool kept from the first run (holding its values).
        assert_eq!(run::<Autodiff<Flex>>(false), got);
        assert_close(&got, &run::<Autodiff<NdArray>>(false));
    }

    /// The frozen weight's path: d hidden formed in the forward, only scaled in the backward.
    #[test]
    fn with_a_frozen_weight_d_hidden_still_matches_the_tensor_ops() {
        let got = run::<Autodiff<Flex>>(true);
        assert_eq!(got.len(), 2);
        assert_close(&got, &run::<Autodiff<NdArray>>(true));
    }
}
