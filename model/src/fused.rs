//! log p(target) from logits in one pass per row, on the CPU backend that the binaries train with.
//!
//! [`target_logprobs`] is `logits[target] - logsumexp(logits)` row by row. On every backend it can
//! be written with tensor ops (max, subtract, exp, sum, log, gather), and that is what runs on
//! ndarray (the deterministic tests), wgpu and cuda. On burn-flex those ops are single-threaded
//! passes over `[rows, vocab]` with a scalar `expf`, and under autodiff their backward adds as
//! many again (a scatter of the gathered gradient, the exp recomputed, broadcasts, a sum of the two
//! branches): in the SmolLM2 DecPO step with every position scored, about a fifth of the time.
//! There (`Flex`, and `Autodiff<Flex>` with its own backward), one parallel pass per row computes
//! the max, the sum of exponentials and the target's log-prob, and the backward writes
//! `g · (onehot(target) - softmax)` in one parallel pass from the kept logits and row maxima and
//! sums. The same numbers to float rounding (`tests/parity_tiny.rs` compares both ways, values
//! and gradients).

use burn::tensor::{Int, Tensor, backend::Backend};

/// `log softmax(logits)[i, targets[i]]` for every row `i`: `logits` `[rows, vocab]`, `targets`
/// `[rows]`, result `[rows]`.
pub fn target_logprobs<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    #[cfg(feature = "flex")]
    let (logits, targets) = match flex::target_logprobs(logits, targets) {
        Ok(logp) => return logp,
        Err(inputs) => inputs,
    };
    composed(logits, targets)
}

/// The same with tensor ops, on any backend.
fn composed<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let max = logits.clone().detach().max_dim(1);
    let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
    (logits.gather(1, targets.unsqueeze_dim(1)) - lse).squeeze_dim(1)
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::{Any, TypeId};

    use burn::backend::Flex;
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::tensor::backend::{Backend, BackendTypes};
    use burn::tensor::{Bytes, DType, Int, Shape, Tensor, TensorPrimitive};
    use rayon::prelude::*;

    type Inputs<B> = (Tensor<B, 2>, Tensor<B, 1, Int>);
    /// burn-autodiff's tensor over burn-flex (its type is not exported by name).
    type AutodiffTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

    /// The fused pass when `B` is burn-flex or burn-flex under autodiff and the logits are f32;
    /// the inputs back otherwise.
    pub(super) fn target_logprobs<B: Backend>(
        logits: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 1>, Inputs<B>> {
        let is = |t: TypeId| TypeId::of::<B>() == t;
        let plain = is(TypeId::of::<Flex>());
        if !(plain || is(TypeId::of::<Autodiff<Flex>>())) || logits.dtype() != DType::F32 {
            return Err((logits, targets));
        }
        let targets: FlexTensor = cast(targets.into_primitive());
        let logits = logits.into_primitive().tensor();
        let out = if plain {
            let logits: FlexTensor = cast(logits);
            let (logp, _) = forward(&logits, &targets);
            cast::<_, B::FloatTensorPrimitive>(logp)
        } else {
            let logits: AutodiffTensor = cast(logits);
            cast(tracked(logits, targets))
        };
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// `from` as `To`, which the caller has checked it is (the backend's own primitive types).
    fn cast<From: Any, To: Any>(from: From) -> To {
        *(Box::new(from) as Box<dyn Any>)
            .downcast::<To>()
            .expect("the backend's primitive type, checked by TypeId")
    }

    #[derive(Debug)]
    struct TargetLogprobs;

    /// Kept for the backward: the logits, the targets and each row's max and sum of
    /// `exp(logit - max)`.
    #[derive(Debug, Clone)]
    struct Saved {
        logits: FlexTensor,
        targets: FlexTensor,
        stats: std::sync::Arc<Vec<(f32, f32)>>,
    }

    impl Backward<Flex, 1> for TargetLogprobs {
        type State = Saved;

        fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let saved = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| backward(&saved, &grad));
        }
    }

    fn tracked(logits: AutodiffTensor, targets: FlexTensor) -> AutodiffTensor {
        match TargetLogprobs
            .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([logits
                .node
                .clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                // Kept row-major, so the backward does not copy a transposed view again.
                let logits = logits.primitive.to_contiguous();
                let (logp, stats) = forward(&logits, &targets);
                let saved = Saved {
                    logits,
                    targets,
                    stats: std::sync::Arc::new(stats),
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

    fn target_ids(targets: &FlexTensor) -> Vec<usize> {
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

    fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(values),
            Layout::contiguous(Shape::from(shape)),
            DType::F32,
        )
    }

    /// log-probs `[rows]` and each row's (max, Σ exp(logit - max)).
    fn forward(logits: &FlexTensor, targets: &FlexTensor) -> (FlexTensor, Vec<(f32, f32)>) {
        let (logits, rows, vocab) = rows_of(logits);
        let targets = target_ids(targets);
        let all = &logits.storage::<f32>()[..rows * vocab];
        let stats: Vec<(f32, f32)> = all
            .par_chunks(vocab)
            .map(|row| {
                // A NaN logit makes the row's max NaN, and so its log-probs (as the tensor ops do).
                let max =
                    row.iter().fold(
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
            .zip(&targets)
            .enumerate()
            .map(|(i, (&(max, sum), &t))| all[i * vocab + t] - (max + sum.ln()))
            .collect();
        (tensor(logp, vec![rows]), stats)
    }

    /// d logits `[rows, vocab]` = g · (onehot(target) - softmax(logits)).
    fn backward(saved: &Saved, grad: &FlexTensor) -> FlexTensor {
        let (logits, rows, vocab) = rows_of(&saved.logits);
        let targets = target_ids(&saved.targets);
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
                out[targets[i]] += g;
            });
        tensor(out, vec![rows, vocab])
    }

    // exp on lanes of 16 by a polynomial (range reduction by ln 2, Cephes' degree-6 minimax
    // coefficients; within 2 ulp of expf for the arguments met here, -87.3 <= x - max <= 0),
    // written so the compiler vectorizes it: libm's expf is called one value at a time.
    const LANES: usize = 16;

    #[inline(always)]
    fn exp_lane(x: f32) -> f32 {
        // Below, exp(x) is under f32's smallest normal (2^-126); it stays there (about 1e-38),
        // nothing against the row's largest term, 1.
        let x = x.max(-87.3);
        // Rounds x·log2(e) to an integer n by adding 1.5·2^23; n is then the low bits of t.
        let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
        let n = t - 12_582_912.0;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 0.166_666_65;
        p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        let bits = (t.to_bits() as i32 - 0x4B40_0000 + 127) << 23;
        y * f32::from_bits(bits as u32)
    }

    /// Σ exp(x - max) over a row.
    fn sum_exp(row: &[f32], max: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a += exp_lane(x - max);
            }
        }
        acc.iter().sum::<f32>() + tail.iter().map(|&x| exp_lane(x - max)).sum::<f32>()
    }

    /// out = scale · exp(x - max) over a row.
    fn scaled_exp(row: &[f32], max: f32, scale: f32, out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = scale * exp_lane(x - max);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::exp_lane;
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
            let logp = super::super::target_logprobs(logits, targets);
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
            let logits = Tensor::<Flex, 2>::from_data(
                TensorData::new(values.clone(), [ROWS, VOCAB]),
                &device,
            );
            let targets = Tensor::<Flex, 1, Int>::from_data(TensorData::from(TARGETS), &device);
            assert_close(
                &host(super::super::target_logprobs(logits, targets)),
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

        #[test]
        fn exp_lane_is_within_2_ulp_of_expf() {
            let mut worst = 0.0f32;
            for i in 0..=87_300 {
                let x = -(i as f32) * 1e-3;
                let (got, want) = (exp_lane(x), x.exp());
                let ulp = (want.to_bits() as i64 - got.to_bits() as i64).unsigned_abs() as f32;
                worst = worst.max(ulp);
            }
            assert!(worst <= 2.0, "worst {worst} ulp");
            for x in [-87.31f32, -100.0, -1e4, f32::NEG_INFINITY] {
                assert!(exp_lane(x) < 1.3e-38, "exp({x}) = {}", exp_lane(x));
            }
        }
    }
}
