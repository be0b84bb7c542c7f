//! Attention under autodiff on burn-flex: the two products by burn-flex's GEMM, the scale, mask
//! and softmax in one parallel pass over the scores, and a backward written out
//! (dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(dP ⊙ P)) · scale, dQ = dS K, dK = dSᵀ Q).

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::exp::exp_lane;
use super::{AutodiffTensor, FlexKind, cast, flex_kind};

type Inputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4, Bool>);

/// The fused attention when `B` is burn-flex under autodiff and `q` is f32; the inputs back
/// otherwise.
pub(super) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Result<Tensor<B, 4>, Inputs<B>> {
    if flex_kind::<B>() != Some(FlexKind::Autodiff) || q.dtype() != DType::F32 {
        return Err((q, k, v, mask));
    }
    let float = |t: Tensor<B, 4>| -> AutodiffTensor { cast(t.into_primitive().tensor()) };
    let mask: FlexTensor = cast(mask.into_primitive());
    let out = tracked(float(q), float(k), float(v), mask);
    Ok(Tensor::from_primitive(TensorPrimitive::Float(cast(out))))
}

#[derive(Debug)]
struct Attention;

/// Kept for the backward: the inputs and the probabilities.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    probs: FlexTensor,
    scale: f32,
}

impl Backward<Flex, 3> for Attention {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = flex(grads.consume::<Flex>(&ops.node));
        let Saved {
            q,
            k,
            v,
            probs,
            scale,
        } = ops.state;
        let [node_q, node_k, node_v] = ops.parents;
        let probs = flex(probs);
        if let Some(node) = node_v {
            let dv = probs.clone().swap_dims(2, 3).matmul(grad.clone());
            grads.register::<Flex>(node.id, raw(dv));
        }
        if node_q.is_none() && node_k.is_none() {
            return;
        }
        let dp = raw(grad.matmul(flex(v).swap_dims(2, 3)));
        let ds = flex(softmax_backward(dp, &raw(probs), scale));
        if let Some(node) = node_q {
            grads.register::<Flex>(node.id, raw(ds.clone().matmul(flex(k))));
        }
        if let Some(node) = node_k {
            grads.register::<Flex>(node.id, raw(ds.swap_dims(2, 3).matmul(flex(q))));
        }
    }
}

fn flex(t: FlexTensor) -> Tensor<Flex, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn raw(t: Tensor<Flex, 4>) -> FlexTensor {
    t.into_primitive().tensor()
}

fn tracked(
    q: AutodiffTensor,
    k: AutodiffTensor,
    v: AutodiffTensor,
    mask: FlexTensor,
) -> AutodiffTensor {
    let scale = 1.0 / (q.primitive.layout().shape()[3] as f32).sqrt();
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let probs = probabilities(&q.primitive, &k.primitive, &mask, scale);
    let out = raw(flex(probs.clone()).matmul(flex(v.primitive.clone())));
    match Attention
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                probs,
                scale,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// softmax(q kᵀ · scale, -∞ where mask) `[batch, heads, rows, cols]`, a row with nothing allowed
/// all 0.
fn probabilities(q: &FlexTensor, k: &FlexTensor, mask: &FlexTensor, scale: f32) -> FlexTensor {
    let mut scores = raw(flex(q.clone()).matmul(flex(k.clone()).swap_dims(2, 3))).to_contiguous();
    let cols = scores.layout().shape()[3];
    let mask = mask.to_contiguous();
    let forbidden = mask.storage::<u8>();
    scores
        .storage_mut::<f32>()
        .par_chunks_mut(cols)
        .zip(forbidden.par_chunks(cols))
        .for_each(|(row, forbidden)| softmax_row(row, forbidden, scale));
    scores
}

fn softmax_row(row: &mut [f32], forbidden: &[u8], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for (x, &f) in row.iter_mut().zip(forbidden) {
        *x = if f != 0 {
            f32::NEG_INFINITY
        } else {
            *x * scale
        };
        // NaN-propagating, as the tensor ops' softmax.
        if *x > max || x.is_nan() {
            max = *x;
        }
    }
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    for (x, &f) in row.iter_mut().zip(forbidden) {
        *x = if f != 0 { 0.0 } else { exp_lane(*x - max) };
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// dS = P ⊙ (dP - rowsum(dP ⊙ P)) · scale, in place of dP.
fn softmax_backward(dp: FlexTensor, probs: &FlexTensor, scale: f32) -> FlexTensor {
    let mut ds = dp.to_contiguous();
    let probs = probs.to_contiguous();
    let cols = ds.layout().shape()[3];
    ds.storage_mut::<f32>()
        .par_chunks_mut(cols)
        .zip(probs.storage::<f32>().par_chunks(cols))
        .for_each(|(d, p)| {
            let dot: f32 = d.iter().zip(p).map(|(d, p)| d * p).sum();
            for (d, &p) in d.iter_mut().zip(p) {
                *d = p * (*d - dot) * scale;
            }
        });
    ds
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Bool, Tensor, TensorData};

    const SHAPE: [usize; 4] = [2, 3, 5, 4];

    fn values(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 * 4.0 - 2.0)
            .collect()
    }

    /// Output and the gradients of q, k, v for Σ w·out on backend `A`; k given as a transposed
    /// view (a layout the GEMM must read as it is).
    fn run<A: AutodiffBackend>(masked_row: bool) -> Vec<Vec<f32>> {
        let device = Default::default();
        let n = SHAPE.iter().product::<usize>();
        let leaf = |seed, shape: [usize; 4]| {
            Tensor::<A, 4>::from_data(TensorData::new(values(seed, n), shape), &device)
                .require_grad()
        };
        let [b, h, t, d] = SHAPE;
        let (q, k_t, v) = (leaf(1, SHAPE), leaf(2, [b, h, d, t]), leaf(3, SHAPE));
        // Forbidden: every column after the row's own (causal), and one row entirely.
        let forbidden: Vec<bool> = (0..b * h * t * t)
            .map(|i| {
                let (row, col) = ((i / t) % t, i % t);
                col > row || (masked_row && i / t == 7)
            })
            .collect();
        let mask =
            Tensor::<A, 4, Bool>::from_data(TensorData::new(forbidden, [b, h, t, t]), &device);
        let out = super::super::attention(q.clone(), k_t.clone().swap_dims(2, 3), v.clone(), mask);
        let w = Tensor::<A, 4>::from_data(TensorData::new(values(4, n), SHAPE), &device);
        let grads = (out.clone() * w).sum().backward();
        let host = |t: Tensor<A::InnerBackend, 4>| t.into_data().into_vec::<f32>().unwrap();
        vec![
            host(out.inner()),
            host(q.grad(&grads).unwrap()),
            host(k_t.grad(&grads).unwrap().swap_dims(2, 3)),
            host(v.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn fused_attention_and_its_gradients_match_burns_attention() {
        let names = ["output", "dq", "dk", "dv"];
        for masked_row in [false, true] {
            let want = run::<Autodiff<NdArray>>(masked_row);
            let got = run::<Autodiff<Flex>>(masked_row);
            for ((name, got), want) in names.iter().zip(&got).zip(&want) {
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{name}[{i}]: {g} vs {w}"
                    );
                }
            }
            if masked_row {
                // Row 7 (batch 0, head 1, row 2) sees nothing: output 0, as burn's attention.
                let row = &got[0][7 * SHAPE[3]..8 * SHAPE[3]];
                assert!(row.iter().all(|&x| x == 0.0), "{row:?}");
            }
        }
    }
}
