//! Grouped-query attention on burn-flex in the projections' own layout: per query head one GEMM
//! call reads q and k where they lie in `[batch, seq, heads · head_dim]` and
//! `[batch, kv_len, kv_heads · head_dim]`, the scale, mask and softmax run in one pass over its
//! scores, and a second GEMM writes the head's output into its columns of
//! `[batch, seq, heads · head_dim]`, the layout the output projection reads; the heads run in
//! parallel. Composed of burn's ops, the heads were copied to a heads-first layout and back,
//! forward and backward, and the scores' softmax was a chain of single-threaded passes.
//!
//! Under autodiff the backward is written out the same way, one task per kv head (so the
//! `groups` query heads that share it add their dK and dV in a fixed order):
//! dV = Σ Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(dP ⊙ P)) · scale, dQ = dS K, dK = Σ dSᵀ Q.

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
use super::gemm::{Mat, MatMut, Shared, matmul};
use super::{AutodiffTensor, FlexKind, cast, flex_kind, tensor};

type Inputs<B> = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 4, Bool>);

/// The fused attention when `B` is burn-flex (with or without autodiff) and `q` is f32; the
/// inputs back otherwise.
pub(super) fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    mask: Tensor<B, 4, Bool>,
    head_dim: usize,
) -> Result<Tensor<B, 3>, Inputs<B>> {
    let kind = match flex_kind::<B>() {
        Some(kind) if q.dtype() == DType::F32 => kind,
        _ => return Err((q, k, v, mask)),
    };
    let Some(dims) = Dims::of(q.dims(), k.dims(), head_dim) else {
        return Err((q, k, v, mask));
    };
    let mask: FlexTensor = cast(mask.into_primitive());
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let out: B::FloatTensorPrimitive = match kind {
        FlexKind::Plain => {
            let [q, k, v] = [q, k, v].map(|t| cast::<_, FlexTensor>(t).to_contiguous());
            cast(forward(&q, &k, &v, &mask, dims, false).0)
        }
        FlexKind::Autodiff => cast(tracked(cast(q), cast(k), cast(v), &mask, dims)),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// The sizes, and where a head's matrix lies in each layout.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    /// From `q` `[batch, seq, heads · head_dim]` and `k` `[batch, kv_len, kv_heads · head_dim]`;
    /// `None` for shapes the fused pass does not take (empty, or heads not a multiple of
    /// kv_heads).
    fn of(
        [batch, seq, q_width]: [usize; 3],
        [_, kv_len, kv_width]: [usize; 3],
        head_dim: usize,
    ) -> Option<Self> {
        let dims = Self {
            batch,
            seq,
            kv_len,
            heads: q_width.checked_div(head_dim)?,
            kv_heads: kv_width.checked_div(head_dim)?,
            head_dim,
        };
        let fits = dims.batch * dims.seq * dims.kv_len * dims.kv_heads > 0
            && dims.heads.is_multiple_of(dims.kv_heads)
            && q_width == dims.heads * head_dim
            && kv_width == dims.kv_heads * head_dim;
        fits.then_some(dims)
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// One head's `[seq, head_dim]` in `[batch, seq, heads · head_dim]` (q, the output, dO, dQ).
    fn q_offset(&self, b: usize, h: usize) -> usize {
        (b * self.seq * self.heads + h) * self.head_dim
    }

    fn q_head(&self, base: *const f32, b: usize, h: usize) -> Mat {
        let width = self.heads * self.head_dim;
        Mat::rows_of(base, self.q_offset(b, h), self.seq, self.head_dim, width)
    }

    fn q_head_mut(&self, base: *mut f32, b: usize, h: usize) -> MatMut {
        let width = self.heads * self.head_dim;
        MatMut::rows_of(base, self.q_offset(b, h), self.seq, self.head_dim, width)
    }

    /// One kv head's `[kv_len, head_dim]` in `[batch, kv_len, kv_heads · head_dim]` (k, v, dK, dV).
    fn kv_offset(&self, b: usize, kvh: usize) -> usize {
        (b * self.kv_len * self.kv_heads + kvh) * self.head_dim
    }

    fn kv_head(&self, base: *const f32, b: usize, kvh: usize) -> Mat {
        let width = self.kv_heads * self.head_dim;
        Mat::rows_of(
            base,
            self.kv_offset(b, kvh),
            self.kv_len,
            self.head_dim,
            width,
        )
    }

    fn kv_head_mut(&self, base: *mut f32, b: usize, kvh: usize) -> MatMut {
        let width = self.kv_heads * self.head_dim;
        MatMut::rows_of(
            base,
            self.kv_offset(b, kvh),
            self.kv_len,
            self.head_dim,
            width,
        )
    }

    /// Elements of one head's scores `[seq, kv_len]`.
    fn tile(&self) -> usize {
        self.seq * self.kv_len
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

#[derive(Debug)]
struct Attention;

/// Kept for the backward: the inputs and the mask (contiguous), the probabilities
/// `[batch, heads, seq, kv_len]` and the sizes.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    probs: FlexTensor,
    mask: FlexTensor,
    dims: Dims,
}

impl Backward<Flex, 3> for Attention {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [node_q, node_k, node_v] = ops.parents;
        let want = [node_q.is_some(), node_k.is_some(), node_v.is_some()];
        let [dq, dk, dv] = backward(&grad, &ops.state, want);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

fn tracked(
    q: AutodiffTensor,
    k: AutodiffTensor,
    v: AutodiffTensor,
    mask: &FlexTensor,
    dims: Dims,
) -> AutodiffTensor {
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let [q, k, v] = [q, k, v].map(|t| t.primitive.to_contiguous());
    match Attention
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, probs) = forward(&q, &k, &v, mask, dims, true);
            let probs = probs.expect("kept when asked for");
            let mask = mask.to_contiguous();
            prep.finish(
                Saved {
                    q,
                    k,
                    v,
                    probs,
                    mask,
                    dims,
                },
                out,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&q, &k, &v, mask, dims, false).0),
    }
}

/// A buffer of `len` f32 whose every element the caller writes before reading it.
fn unfilled(len: usize) -> Vec<f32> {
    Vec::with_capacity(len)
}

/// Query rows taken together: each block's products stop at the last column any of its rows
/// may see (under a causal mask, half the scores on average are never computed).
const ROW_BLOCK: usize = 32;

/// The row blocks of one head's `[seq, kv_len]` mask: `(first row, rows, columns)`, columns
/// being 1 + the last column that some row of the block may see (0 when none may see any).
fn row_blocks(forbidden: &[u8], seq: usize, kv_len: usize) -> Vec<(usize, usize, usize)> {
    (0..seq)
        .step_by(ROW_BLOCK)
        .map(|r0| {
            let rows = ROW_BLOCK.min(seq - r0);
            let block = &forbidden[r0 * kv_len..(r0 + rows) * kv_len];
            let cols = block
                .chunks(kv_len)
                .map(|row| row.iter().rposition(|&f| f == 0).map_or(0, |c| c + 1))
                .max()
                .unwrap_or(0);
            (r0, rows, cols)
        })
        .collect()
}

/// The output `[batch, seq, heads · head_dim]` and, when `keep_probs`, the probabilities
/// `[batch, heads, seq, kv_len]`. `q`, `k`, `v` contiguous.
fn forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &FlexTensor,
    dims: Dims,
    keep_probs: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let Dims {
        batch,
        seq,
        kv_len,
        heads,
        head_dim,
        ..
    } = dims;
    // The stacked mask `[batch, kv_heads, groups · seq, kv_len]` lies in memory as
    // `[batch, heads, seq, kv_len]` (query head h = kv head · groups + group).
    let mask = mask.to_contiguous();
    let forbidden = mask.storage::<u8>();
    let tile = dims.tile();
    assert_eq!(
        forbidden.len(),
        batch * heads * tile,
        "attention mask's size"
    );
    let (q, k, v) = (q.storage::<f32>(), k.storage::<f32>(), v.storage::<f32>());
    let out_len = batch * seq * heads * head_dim;
    let probs_len = if keep_probs { batch * heads * tile } else { 0 };
    let (mut out, mut probs) = (unfilled(out_len), unfilled(probs_len));
    let (out_buf, probs_buf) = (Shared::new(&mut out), Shared::new(&mut probs));
    // One task per (batch, query head): its scores tile (in `probs`, or the task's scratch) and
    // its columns of the output are its own.
    (0..batch * heads).into_par_iter().for_each_init(
        || unfilled(if keep_probs { 0 } else { tile }),
        |scratch, bh| {
            let (b, h) = (bh / heads, bh % heads);
            let kvh = h / dims.groups();
            let p = match keep_probs {
                true => probs_buf.ptr().wrapping_add(bh * tile),
                false => scratch.as_mut_ptr(),
            };
            let forbidden = &forbidden[bh * tile..(bh + 1) * tile];
            let scores = MatMut::rows_of(p, 0, seq, kv_len, kv_len);
            let q_h = dims.q_head(q.as_ptr(), b, h);
            let (k_h, v_h) = (
                dims.kv_head(k.as_ptr(), b, kvh),
                dims.kv_head(v.as_ptr(), b, kvh),
            );
            let out_h = dims.q_head_mut(out_buf.ptr(), b, h);
            for (r0, rows, cols) in row_blocks(forbidden, seq, kv_len) {
                let block = scores.sub(r0, rows, 0, kv_len);
                // SAFETY: every view lies in its buffer (sizes from `dims`), the tile at `p`
                // and this head's output columns are this task's alone; the block's scores are
                // written (product, then zeros past `cols`) before they are read.
                unsafe {
                    if cols > 0 {
                        let k_seen = k_h.sub(0, cols, 0, head_dim);
                        matmul(
                            block.sub(0, rows, 0, cols),
                            false,
                            q_h.sub(r0, rows, 0, head_dim),
                            k_seen.t(),
                        );
                    }
                    block.sub(0, rows, cols, kv_len - cols).fill_zero();
                    let rows_of = std::slice::from_raw_parts_mut(p.add(r0 * kv_len), rows * kv_len);
                    let forbidden = &forbidden[r0 * kv_len..(r0 + rows) * kv_len];
                    for (row, forbidden) in rows_of.chunks_mut(kv_len).zip(forbidden.chunks(kv_len))
                    {
                        softmax_row(&mut row[..cols], &forbidden[..cols], dims.scale());
                    }
                    let out_block = out_h.sub(r0, rows, 0, head_dim);
                    if cols > 0 {
                        let probs = block.sub(0, rows, 0, cols).as_const();
                        matmul(out_block, false, probs, v_h.sub(0, cols, 0, head_dim));
                    } else {
                        out_block.fill_zero();
                    }
                }
            }
        },
    );
    // SAFETY: the tasks wrote every element (each head its columns of every row; each tile
    // whole).
    unsafe {
        out.set_len(out_len);
        probs.set_len(probs_len);
    }
    let out = tensor(out, vec![batch, seq, heads * head_dim]);
    let probs = keep_probs.then(|| tensor(probs, vec![batch, heads, seq, kv_len]));
    (out, probs)
}

/// dQ, dK, dV (those `want` asks for) from dO `[batch, seq, heads · head_dim]` (contiguous).
fn backward(grad: &FlexTensor, saved: &Saved, want: [bool; 3]) -> [Option<FlexTensor>; 3] {
    let Saved {
        q,
        k,
        v,
        probs,
        mask,
        dims,
    } = saved;
    let dims = *dims;
    let [want_q, want_k, want_v] = want;
    let (q, k, v) = (q.storage::<f32>(), k.storage::<f32>(), v.storage::<f32>());
    let (grad, probs) = (grad.storage::<f32>(), probs.storage::<f32>());
    let forbidden = mask.storage::<u8>();
    let (seq, kv_len, head_dim, tile) = (dims.seq, dims.kv_len, dims.head_dim, dims.tile());
    let q_len = dims.batch * seq * dims.heads * head_dim;
    let kv_total = dims.batch * kv_len * dims.kv_heads * head_dim;
    // Zeros where a block sees no column; dK and dV are sums.
    let zeros = |want: bool, len: usize| vec![0.0f32; if want { len } else { 0 }];
    let (mut dq, mut dk, mut dv) = (
        zeros(want_q, q_len),
        zeros(want_k, kv_total),
        zeros(want_v, kv_total),
    );
    let (dq_buf, dk_buf, dv_buf) = (
        Shared::new(&mut dq),
        Shared::new(&mut dk),
        Shared::new(&mut dv),
    );
    // One task per (batch, kv head): the `groups` query heads reading it, in order, so their
    // dK and dV add up in a fixed order; dQ's columns of those heads and dK's and dV's of this
    // kv head are the task's own.
    (0..dims.batch * dims.kv_heads)
        .into_par_iter()
        .for_each_init(
            || unfilled(ROW_BLOCK * kv_len),
            |scratch, bk| {
                let (b, kvh) = (bk / dims.kv_heads, bk % dims.kv_heads);
                let (k_h, v_h) = (
                    dims.kv_head(k.as_ptr(), b, kvh),
                    dims.kv_head(v.as_ptr(), b, kvh),
                );
                let (dk_h, dv_h) = (
                    dims.kv_head_mut(dk_buf.ptr(), b, kvh),
                    dims.kv_head_mut(dv_buf.ptr(), b, kvh),
                );
                let groups = dims.groups();
                for h in kvh * groups..(kvh + 1) * groups {
                    let bh = b * dims.heads + h;
                    let p_h = Mat::rows_of(probs.as_ptr(), bh * tile, seq, kv_len, kv_len);
                    let (q_h, d_out) = (
                        dims.q_head(q.as_ptr(), b, h),
                        dims.q_head(grad.as_ptr(), b, h),
                    );
                    let dq_h = dims.q_head_mut(dq_buf.ptr(), b, h);
                    let forbidden = &forbidden[bh * tile..(bh + 1) * tile];
                    for (r0, rows, cols) in row_blocks(forbidden, seq, kv_len) {
                        if cols == 0 {
                            continue;
                        }
                        let p = p_h.sub(r0, rows, 0, cols);
                        let d_out = d_out.sub(r0, rows, 0, head_dim);
                        let (k_seen, v_seen) =
                            (k_h.sub(0, cols, 0, head_dim), v_h.sub(0, cols, 0, head_dim));
                        // SAFETY: as in `forward`; dS is written whole into the scratch before it is
                        // read; dK and dV start at 0.
                        unsafe {
                            if want_v {
                                matmul(dv_h.sub(0, cols, 0, head_dim), true, p.t(), d_out);
                            }
                            if !(want_q || want_k) {
                                continue;
                            }
                            let ds = MatMut::rows_of(scratch.as_mut_ptr(), 0, rows, cols, cols);
                            matmul(ds, false, d_out, v_seen.t());
                            let ds_rows =
                                std::slice::from_raw_parts_mut(scratch.as_mut_ptr(), rows * cols);
                            let p_rows = &probs[bh * tile + r0 * kv_len..];
                            for (i, d) in ds_rows.chunks_mut(cols).enumerate() {
                                softmax_backward_row(
                                    d,
                                    &p_rows[i * kv_len..i * kv_len + cols],
                                    dims.scale(),
                                );
                            }
                            let ds = ds.as_const();
                            if want_q {
                                matmul(dq_h.sub(r0, rows, 0, head_dim), false, ds, k_seen);
                            }
                            if want_k {
                                matmul(
                                    dk_h.sub(0, cols, 0, head_dim),
                                    true,
                                    ds.t(),
                                    q_h.sub(r0, rows, 0, head_dim),
                                );
                            }
                        }
                    }
                }
            },
        );
    let q_shape = vec![dims.batch, seq, dims.heads * head_dim];
    let kv_shape = vec![dims.batch, kv_len, dims.kv_heads * head_dim];
    [
        want_q.then(|| tensor(dq, q_shape)),
        want_k.then(|| tensor(dk, kv_shape.clone())),
        want_v.then(|| tensor(dv, kv_shape)),
    ]
}

/// softmax(row · scale, -∞ where forbidden) in place; a row with nothing allowed becomes 0.
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
fn softmax_backward_row(d: &mut [f32], p: &[f32], scale: f32) {
    let dot: f32 = d.iter().zip(p).map(|(d, p)| d * p).sum();
    for (d, &p) in d.iter_mut().zip(p) {
        *d = p * (*d - dot) * scale;
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use burn::tensor::{Bool, Tensor, TensorData};

    use crate::attention::stack_mask;

    // Two kv heads read by two query heads each.
    const BATCH: usize = 2;
    // Three row blocks (32, 32, 6 rows) of the products.
    const SEQ: usize = 70;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 3;

    fn values(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 * 4.0 - 2.0)
            .collect()
    }

    /// Causal, plus (when `masked_row`) every column of batch 1's position 2 (a row that sees
    /// nothing) and of batch 0's last 6 positions (a row block that sees nothing).
    /// `[batch, 1, seq, seq]`, stacked for the kv heads.
    fn mask<B: Backend>(masked_row: bool, device: &B::Device) -> Tensor<B, 4, Bool> {
        let forbidden: Vec<bool> = (0..BATCH * SEQ * SEQ)
            .map(|i| {
                let (b, row, col) = (i / (SEQ * SEQ), (i / SEQ) % SEQ, i % SEQ);
                col > row || (masked_row && ((b == 1 && row == 2) || (b == 0 && row >= 64)))
            })
            .collect();
        let mask = Tensor::from_data(TensorData::new(forbidden, [BATCH, 1, SEQ, SEQ]), device);
        stack_mask(mask, KV_HEADS, HEADS / KV_HEADS)
    }

    /// Output and the gradients of q, k, v for Σ w·out on backend `A`; q given as a transposed
    /// view (a layout the pass must copy before reading it as rows).
    fn run<A: AutodiffBackend>(masked_row: bool) -> Vec<Vec<f32>> {
        let device = Default::default();
        let leaf = |seed, shape: [usize; 3]| {
            let n = shape.iter().product();
            Tensor::<A, 3>::from_data(TensorData::new(values(seed, n), shape), &device)
                .require_grad()
        };
        let q_t = leaf(1, [BATCH, HEADS * HEAD_DIM, SEQ]);
        let (k, v) = (
            leaf(2, [BATCH, SEQ, KV_HEADS * HEAD_DIM]),
            leaf(3, [BATCH, SEQ, KV_HEADS * HEAD_DIM]),
        );
        let q = q_t.clone().swap_dims(1, 2);
        let out =
            super::super::attention(q, k.clone(), v.clone(), mask(masked_row, &device), HEAD_DIM);
        let w = Tensor::<A, 3>::from_data(
            TensorData::new(
                values(4, BATCH * SEQ * HEADS * HEAD_DIM),
                [BATCH, SEQ, HEADS * HEAD_DIM],
            ),
            &device,
        );
        let grads = (out.clone() * w).sum().backward();
        let host = |t: Tensor<A::InnerBackend, 3>| t.into_data().into_vec::<f32>().unwrap();
        vec![
            host(out.inner()),
            host(q_t.grad(&grads).unwrap().swap_dims(1, 2)),
            host(k.grad(&grads).unwrap()),
            host(v.grad(&grads).unwrap()),
        ]
    }

    fn assert_close(name: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn fused_attention_and_its_gradients_match_burns_attention() {
        let names = ["output", "dq", "dk", "dv"];
        for masked_row in [false, true] {
            let want = run::<Autodiff<NdArray>>(masked_row);
            let got = run::<Autodiff<Flex>>(masked_row);
            for ((name, got), want) in names.iter().zip(&got).zip(&want) {
                assert_close(name, got, want);
            }
            if masked_row {
                // Batch 1's position 2 sees nothing: output 0 in every head, as burn's
                // attention gives.
                let width = HEADS * HEAD_DIM;
                let row = &got[0][(SEQ + 2) * width..(SEQ + 3) * width];
                assert!(row.iter().all(|&x| x == 0.0), "{row:?}");
            }
        }
    }

    /// Without autodiff (the reference model's forward) the same output.
    #[test]
    fn fused_attention_without_autodiff_matches_burns_attention() {
        fn out<B: Backend>() -> Vec<f32> {
            let device = Default::default();
            let t = |seed, width| {
                let shape = [BATCH, SEQ, width];
                let n = BATCH * SEQ * width;
                Tensor::<B, 3>::from_data(TensorData::new(values(seed, n), shape), &device)
            };
            let (q, k, v) = (
                t(1, HEADS * HEAD_DIM),
                t(2, KV_HEADS * HEAD_DIM),
                t(3, KV_HEADS * HEAD_DIM),
            );
            let out = super::super::attention(q, k, v, mask(true, &device), HEAD_DIM);
            out.into_data().into_vec::<f32>().unwrap()
        }
        assert_close("output", &out::<Flex>(), &out::<NdArray>());
    }
}
