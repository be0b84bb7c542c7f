//! `x · W` on burn-flex by one GEMM call straight into the output (burn-flex's matmul
//! zero-fills each output, then copies it once more to align it), and under autodiff its
//! backward the same way: dx = g · Wᵀ, dW = xᵀ · g, each only when asked for. The operands are
//! kept for the backward only where it needs them (x only for dW: a frozen base weight, as
//! under LoRA, keeps no activation).

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::gemm::{Mat, product};
use super::{AutodiffTensor, FlexKind, cast, flex_kind};

/// The fused product when `B` is burn-flex (with or without autodiff) and both operands are
/// f32; the operands back otherwise.
pub(super) fn matmul<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let kind = match flex_kind::<B>() {
        Some(kind) if x.dtype() == DType::F32 && weight.dtype() == DType::F32 => kind,
        _ => return Err((x, weight)),
    };
    let (x, weight) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let out: B::FloatTensorPrimitive = match kind {
        FlexKind::Plain => {
            let (x, weight): (FlexTensor, FlexTensor) = (cast(x), cast(weight));
            cast(product(Mat::of(&x), Mat::of(&weight)))
        }
        FlexKind::Autodiff => cast(tracked(cast(x), cast(weight))),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[derive(Debug)]
struct Linear;

/// Kept for the backward: x when dW is wanted, the weight when dx is.
#[derive(Debug, Clone)]
struct Saved {
    x: Option<FlexTensor>,
    weight: Option<FlexTensor>,
}

impl Backward<Flex, 2> for Linear {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let g = Mat::of(&grad);
        let [node_x, node_weight] = ops.parents;
        if let (Some(node), Some(weight)) = (node_x, &ops.state.weight) {
            grads.register::<Flex>(node.id, product(g, Mat::of(weight).t()));
        }
        if let (Some(node), Some(x)) = (node_weight, &ops.state.x) {
            grads.register::<Flex>(node.id, product(Mat::of(x).t(), g));
        }
    }
}

fn tracked(x: AutodiffTensor, weight: AutodiffTensor) -> AutodiffTensor {
    let out = product(Mat::of(&x.primitive), Mat::of(&weight.primitive));
    let nodes = [x.node.clone(), weight.node.clone()];
    let want_dx = !x.node.requirement.is_none();
    let want_dw = !weight.node.requirement.is_none();
    match Linear
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                x: want_dw.then_some(x.primitive),
                weight: want_dx.then_some(weight.primitive),
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Tensor, TensorData};

    fn values(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 * 4.0 - 2.0)
            .collect()
    }

    /// x · W and the gradients of x and W for Σ w·out on backend `A` (W given as a transposed
    /// view), and the same with a frozen W (only dx).
    fn run<A: AutodiffBackend>() -> Vec<Vec<f32>> {
        let device = Default::default();
        let t = |seed, shape: [usize; 2]| {
            let n = shape[0] * shape[1];
            Tensor::<A, 2>::from_data(TensorData::new(values(seed, n), shape), &device)
        };
        let (x, w_t) = (t(1, [7, 5]).require_grad(), t(2, [3, 5]).require_grad());
        let out = super::super::matmul(x.clone(), w_t.clone().transpose());
        let grads = (out.clone() * t(3, [7, 3])).sum().backward();
        let frozen = t(2, [3, 5]);
        let out2 = super::super::matmul(x.clone(), frozen.transpose());
        let grads2 = (out2 * t(4, [7, 3])).sum().backward();
        let host = |t: Tensor<A::InnerBackend, 2>| t.into_data().into_vec::<f32>().unwrap();
        vec![
            host(out.inner()),
            host(x.grad(&grads).unwrap()),
            host(w_t.grad(&grads).unwrap()),
            host(x.grad(&grads2).unwrap()),
        ]
    }

    #[test]
    fn fused_product_and_its_gradients_match_the_tensor_ops() {
        let want = run::<Autodiff<NdArray>>();
        let got = run::<Autodiff<Flex>>();
        for ((name, got), want) in ["out", "dx", "dW", "dx (frozen W)"]
            .iter()
            .zip(&got)
            .zip(&want)
        {
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        }
    }
}
