//! Three hot spots of a training step as one pass each on the CPU backend the binaries train with.
//!
//! Each is written here with tensor ops, and that is what runs on ndarray (the deterministic
//! tests), wgpu and cuda. On burn-flex those ops are single-threaded passes with a scalar `expf`,
//! and under autodiff their backward adds as many again; the main thread did them while the
//! other core waited. There (found by `TypeId`, so the generic model needs no new bound), each
//! is one parallel pass with a vectorized exp, with its own backward:
//!
//! - [`target_logprobs`]: `logits[target] - logsumexp(logits)` row by row; the backward writes
//!   `g · (onehot(target) - softmax)` from the kept logits and row statistics. Also without
//!   autodiff (the reference model).
//! - [`attention`]: grouped-query softmax(Q Kᵀ / √d, masked) V read and written in the
//!   projections' layout, per head two GEMM calls around one pass of scale, mask and softmax,
//!   the heads in parallel; the backward the same way. With and without autodiff.
//! - [`swiglu`]: `silu(gate) · up` of the MLP, forward and backward one pass each.
//!
//! The same numbers to float rounding: each file's tests compare with f64 on the host and with
//! the tensor ops, values and gradients; tests/decpo_loss.rs runs the PyTorch fixture on flex.

use burn::tensor::activation::silu;
use burn::tensor::module::attention as tensor_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, backend::Backend};

#[cfg(feature = "flex")]
mod attention;
#[cfg(feature = "flex")]
mod exp;
#[cfg(feature = "flex")]
mod gemm;
#[cfg(feature = "flex")]
mod linear;
#[cfg(feature = "flex")]
mod logprobs;
#[cfg(feature = "flex")]
mod pool;
#[cfg(feature = "flex")]
mod swiglu;
#[cfg(feature = "flex")]
mod unembed;

/// `log softmax(logits)[i, targets[i]]` for every row `i`: `logits` `[rows, vocab]`, `targets`
/// `[rows]`, result `[rows]`.
pub fn target_logprobs<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    #[cfg(feature = "flex")]
    let (logits, targets) = match logprobs::target_logprobs(logits, targets) {
        Ok(logp) => return logp,
        Err(inputs) => inputs,
    };
    let max = logits.clone().detach().max_dim(1);
    let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
    (logits.gather(1, targets.unsqueeze_dim(1)) - lse).squeeze_dim(1)
}

/// `x · weight`: `x` `[rows, d_in]`, `weight` `[d_in, d_out]` (any layout), as burn's `linear`
/// without bias.
pub fn matmul<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let (x, weight) = match linear::matmul(x, weight) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    burn::tensor::module::linear(x, weight, None)
}

/// `log softmax(hidden · weight)[i, targets[i]]` for every row `i`: `hidden` `[rows, width]`,
/// `weight` `[width, vocab]` (a transposed view of a tied embedding is read as it lies),
/// `targets` `[rows]`; result `[rows]` in f32. Elsewhere than burn-flex in f32 the logits
/// come from `logits` (the caller's product `[rows, vocab]`, in the layout it picks) through
/// [`target_logprobs`].
pub fn unembed_logprobs<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    logits: impl FnOnce() -> Tensor<B, 2>,
) -> Tensor<B, 1> {
    #[cfg(feature = "flex")]
    let targets = match unembed::unembed_logprobs(hidden, weight, targets) {
        Ok(logp) => return logp,
        Err((_, _, targets)) => targets,
    };
    #[cfg(not(feature = "flex"))]
    let _ = (hidden, weight);
    target_logprobs(crate::precision::f32(logits()), targets)
}

/// Grouped-query attention in the projections' layout: `q` `[batch, seq, heads · head_dim]`,
/// `k` and `v` `[batch, kv_len, kv_heads · head_dim]`, `mask` stacked as [`grouped_attention`]
/// takes it; the result `[batch, seq, heads · head_dim]`, what the output projection reads.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    mask: Tensor<B, 4, Bool>,
    head_dim: usize,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (q, k, v, mask) = match attention::attention(q, k, v, mask, head_dim) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    let heads = |t| split_heads(t, head_dim);
    grouped_attention(heads(q), heads(k), heads(v), mask)
}

/// `[batch, seq, heads · head_dim]` as `[batch, heads, seq, head_dim]` (a view).
pub fn split_heads<B: Backend>(t: Tensor<B, 3>, head_dim: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = t.dims();
    t.reshape([batch, seq, width / head_dim, head_dim])
        .swap_dims(1, 2)
}

/// `softmax(q kᵀ / √head_dim, -∞ where mask) v` per query head, head h reading kv head
/// h / groups, by burn's `attention` with default options: `q` `[batch, heads, seq, head_dim]`,
/// `k` and `v` `[batch, kv_heads, kv_len, head_dim]` (the KV cache's layout), `mask`
/// `[batch, kv_heads, groups · seq, kv_len]` true where forbidden (see
/// `attention::stack_mask`); a row with nothing allowed gives 0. The result
/// `[batch, seq, heads · head_dim]`.
pub fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = q.dims();
    let kv_heads = k.dims()[1];
    // Without copying keys and values per query head: the `groups` query heads of one kv head
    // are stacked as `groups · seq` query rows against it (the mask comes stacked the same way).
    let q = q.reshape([batch, kv_heads, heads / kv_heads * seq, head_dim]);
    let options = AttentionModuleOptions::default();
    tensor_attention(q, k, v, Some(mask), None, options)
        .reshape([batch, heads, seq, head_dim])
        .swap_dims(1, 2)
        .reshape([batch, seq, heads * head_dim])
}

/// `silu(gate) · up`, the SwiGLU MLP's inner product: `gate`, `up` and the result
/// `[batch, seq, d_ff]`.
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (gate, up) = match swiglu::swiglu(gate, up) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    silu(gate) * up
}

/// Which burn-flex backend `B` is, when it is one.
#[cfg(feature = "flex")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlexKind {
    Plain,
    Autodiff,
}

#[cfg(feature = "flex")]
fn flex_kind<B: Backend>() -> Option<FlexKind> {
    use burn::backend::{Autodiff, Flex};
    use std::any::TypeId;
    let b = TypeId::of::<B>();
    if b == TypeId::of::<Flex>() {
        Some(FlexKind::Plain)
    } else if b == TypeId::of::<Autodiff<Flex>>() {
        Some(FlexKind::Autodiff)
    } else {
        None
    }
}

/// burn-autodiff's tensor over burn-flex (its type is not exported by name).
#[cfg(feature = "flex")]
type AutodiffTensor = <burn::backend::Autodiff<burn::backend::Flex> as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// `from` as `To`, which the caller has checked it is (the backend's own primitive types).
#[cfg(feature = "flex")]
fn cast<From: std::any::Any, To: std::any::Any>(from: From) -> To {
    *(Box::new(from) as Box<dyn std::any::Any>)
        .downcast::<To>()
        .expect("the backend's primitive type, checked by TypeId")
}

/// A row-major f32 burn-flex tensor of `values`.
#[cfg(feature = "flex")]
fn tensor(values: Vec<f32>, shape: Vec<usize>) -> burn::backend::flex::FlexTensor {
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::tensor::{Bytes, DType, Shape};
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}
