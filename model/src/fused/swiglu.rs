//! silu(gate) · up on burn-flex in one parallel pass, and under autodiff its backward in one:
//! d gate = g · up · σ(gate) · (1 + gate · (1 - σ(gate))), d up = g · silu(gate).

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::exp::exp_lane;
use super::{AutodiffTensor, FlexKind, cast, flex_kind, tensor};

/// Elements a task takes at a time.
const BLOCK: usize = 1 << 14;

/// The fused pass when `B` is burn-flex (with or without autodiff) and `gate` is f32; the
/// inputs back otherwise.
pub(super) fn swiglu<B: Backend>(
    gate: Tensor<B, 3>,
    up: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>)> {
    let kind = match flex_kind::<B>() {
        Some(kind) if gate.dtype() == DType::F32 => kind,
        _ => return Err((gate, up)),
    };
    let gate = gate.into_primitive().tensor();
    let up = up.into_primitive().tensor();
    let out: B::FloatTensorPrimitive = match kind {
        FlexKind::Plain => cast(forward(&cast(gate), &cast(up))),
        FlexKind::Autodiff => cast(tracked(cast(gate), cast(up))),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<Flex, 2> for SwiGlu {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let (d_gate, d_up) = backward(&grad, &gate, &up);
        let [node_gate, node_up] = ops.parents;
        if let Some(node) = node_gate {
            grads.register::<Flex>(node.id, d_gate);
        }
        if let Some(node) = node_up {
            grads.register::<Flex>(node.id, d_up);
        }
    }
}

fn tracked(gate: AutodiffTensor, up: AutodiffTensor) -> AutodiffTensor {
    let out = forward(&gate.primitive, &up.primitive);
    match SwiGlu
        .prepare::<NoCheckpointing>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    // exp(-x) overflows f32 above 88.7; σ is 0 to f32 precision there anyway.
    1.0 / (1.0 + exp_lane((-x).min(88.0)))
}

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let shape = gate.layout().shape().to_vec();
    let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
    let n = shape.iter().product::<usize>();
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(BLOCK)
        .zip(gate.storage::<f32>()[..n].par_chunks(BLOCK))
        .zip(up.storage::<f32>()[..n].par_chunks(BLOCK))
        .for_each(|((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    tensor(out, shape)
}

fn backward(grad: &FlexTensor, gate: &FlexTensor, up: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let shape = gate.layout().shape().to_vec();
    let (grad, gate, up) = (
        grad.to_contiguous(),
        gate.to_contiguous(),
        up.to_contiguous(),
    );
    let n = shape.iter().product::<usize>();
    let mut d_gate = vec![0.0f32; n];
    let mut d_up = vec![0.0f32; n];
    d_gate
        .par_chunks_mut(BLOCK)
        .zip(d_up.par_chunks_mut(BLOCK))
        .zip(grad.storage::<f32>()[..n].par_chunks(BLOCK))
        .zip(gate.storage::<f32>()[..n].par_chunks(BLOCK))
        .zip(up.storage::<f32>()[..n].par_chunks(BLOCK))
        .for_each(|((((dg, du), d), g), u)| {
            for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du).zip(d).zip(g).zip(u) {
                let s = sigmoid(g);
                *du = d * g * s;
                *dg = d * u * s * (1.0 + g * (1.0 - s));
            }
        });
    (tensor(d_gate, shape.clone()), tensor(d_up, shape))
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::activation::silu;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Tensor, TensorData};

    const SHAPE: [usize; 3] = [2, 3, 1500];

    fn values(seed: usize, scale: f32) -> Vec<f32> {
        let n = SHAPE.iter().product::<usize>();
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 - 0.5) * scale)
            .collect()
    }

    /// out, d gate, d up for Σ w·out; `fused` picks our function or burn's silu · up.
    fn run<A: AutodiffBackend>(fused: bool) -> Vec<Vec<f32>> {
        let device = Default::default();
        let leaf = |seed, scale| {
            Tensor::<A, 3>::from_data(TensorData::new(values(seed, scale), SHAPE), &device)
                .require_grad()
        };
        // Gates over ±100: both tails of the sigmoid.
        let (gate, up) = (leaf(1, 200.0), leaf(2, 4.0));
        let out = if fused {
            crate::fused::swiglu(gate.clone(), up.clone())
        } else {
            silu(gate.clone()) * up.clone()
        };
        let w = Tensor::<A, 3>::from_data(TensorData::new(values(3, 2.0), SHAPE), &device);
        let grads = (out.clone() * w).sum().backward();
        let host = |t: Tensor<A::InnerBackend, 3>| t.into_data().into_vec::<f32>().unwrap();
        vec![
            host(out.inner()),
            host(gate.grad(&grads).unwrap()),
            host(up.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn fused_swiglu_and_its_gradients_match_silu_times_up() {
        let want = run::<Autodiff<NdArray>>(false);
        let got = run::<Autodiff<Flex>>(true);
        for ((name, got), want) in ["output", "d gate", "d up"].iter().zip(&got).zip(&want) {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        }
        // Without autodiff (the reference model, generation).
        let device = Default::default();
        let t = |seed, scale| {
            Tensor::<Flex, 3>::from_data(TensorData::new(values(seed, scale), SHAPE), &device)
        };
        let plain = crate::fused::swiglu(t(1, 200.0), t(2, 4.0))
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for (i, (g, w)) in plain.iter().zip(&want[0]).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "plain[{i}]: {g} vs {w}"
            );
        }
    }
}
