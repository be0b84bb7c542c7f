//! Key/value cache for incremental generation, written in place.
//!
//! Every layer's keys and values live in one buffer per layer, `[batch, kv_heads, capacity,
//! head_dim]`, allocated at the first step; each step writes its positions into it
//! (`slice_assign`, in place while the cache holds the only reference) and attention reads the
//! filled prefix. Nothing is concatenated per token; a step past the capacity doubles it.
//!
//! Except on burn-flex: its `slice_assign` (0.21) copies the whole buffer whatever holds it (it
//! keeps a second reference to the buffer while writing; fixed upstream in 0.23), and its
//! attention copies a narrowed view into a contiguous one. There each step concatenates its
//! columns to the cached ones instead: one copy of the filled columns per layer and step, where
//! writing in place cost a copy of the whole buffer and one of the filled columns (batched
//! generation 0.84x the time, measured).
//!
//! A batch of prompts of different lengths is padded: row `r` has `pads[r]` padding columns
//! from column `pad_start` on (0: left padding; after a shared prefix: between it and the row's
//! own tokens). No query attends to a padding column (except the padding column itself, so that
//! no row of the softmax is empty), and padding does not count as positions: every real token
//! sits at the position it would have alone.

use burn::tensor::{Tensor, backend::Backend};

#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Whether the buffers are written in place (else concatenated; see the module's text).
    in_place: Option<bool>,
    /// Columns filled so far (padding included).
    len: usize,
    capacity: usize,
    /// Where each row's padding begins.
    pad_start: usize,
    /// Padding columns of each row; empty means no padding.
    pads: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    /// A cache for `num_layers` layers with room for `capacity` columns before it grows.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            in_place: None,
            len: 0,
            capacity: capacity.max(1),
            pad_start: 0,
            pads: Vec::new(),
        }
    }

    /// Number of columns cached (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Row `row`'s padding begins at the next column (after a shared prefix already cached) and
    /// spans `pads[row]` columns.
    pub fn pad_next(&mut self, pads: Vec<usize>) {
        self.pad_start = self.len;
        self.pads = pads;
    }

    fn pad(&self, row: usize) -> usize {
        self.pads.get(row).copied().unwrap_or(0)
    }

    /// Whether column `col` of row `row` is padding.
    pub fn is_padding(&self, row: usize, col: usize) -> bool {
        col >= self.pad_start && col < self.pad_start + self.pad(row)
    }

    /// The position of column `col` of row `row`: its index less the padding before it (a
    /// padding column gets the position of the column before the padding).
    pub fn position(&self, row: usize, col: usize) -> usize {
        if col < self.pad_start {
            col
        } else {
            col.saturating_sub(self.pad(row)).max(self.pad_start)
        }
    }

    /// One row becomes `n` copies of it (a shared prefix handed to every row of a batch).
    pub fn repeat_row(&mut self, n: usize) {
        self.retain_rows(&vec![0; n]);
    }

    /// Writes this step's keys/values of `layer` (`[batch, kv_heads, new, head_dim]`) after the
    /// cached columns and returns all of them, `[batch, kv_heads, len + new, head_dim]`.
    pub(crate) fn extend(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, heads, new, dim] = k.dims();
        let end = self.len + new;
        let in_place = *self
            .in_place
            .get_or_insert_with(|| !B::name(&k.device()).contains("flex"));
        if !in_place {
            let (k, v) = match self.layers[layer].take() {
                Some((kb, vb)) => (Tensor::cat(vec![kb, k], 2), Tensor::cat(vec![vb, v], 2)),
                None => (k, v),
            };
            self.layers[layer] = Some((k.clone(), v.clone()));
            return (k, v);
        }
        let (mut kb, mut vb) = match self.layers[layer].take() {
            Some(buffers) => buffers,
            None => (self.buffer_like(&k), self.buffer_like(&v)),
        };
        let have = kb.dims()[2];
        if end > have {
            let grow = |b: Tensor<B, 4>| {
                let more = Tensor::<B, 4>::zeros(
                    [batch, heads, end.max(2 * have) - have, dim],
                    &b.device(),
                )
                .cast(b.dtype());
                Tensor::cat(vec![b, more], 2)
            };
            (kb, vb) = (grow(kb), grow(vb));
        }
        let at = [0..batch, 0..heads, self.len..end, 0..dim];
        let kb = kb.slice_assign(at.clone(), k);
        let vb = vb.slice_assign(at, v);
        let filled = (kb.clone().narrow(2, 0, end), vb.clone().narrow(2, 0, end));
        self.layers[layer] = Some((kb, vb));
        filled
    }

    fn buffer_like(&self, t: &Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, _, dim] = t.dims();
        Tensor::<B, 4>::zeros([batch, heads, self.capacity, dim], &t.device()).cast(t.dtype())
    }

    /// Marks `n` new columns as cached (after every layer has been extended).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Keeps only the rows `rows` (in that order), e.g. when the other rows have finished.
    pub fn retain_rows(&mut self, rows: &[usize]) {
        if let Some((k, _)) = self.layers.iter().flatten().next() {
            let device = k.device();
            let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(ids, [rows.len()]),
                &device,
            );
            for (k, v) in self.layers.iter_mut().flatten() {
                *k = k.clone().select(0, ids.clone());
                *v = v.clone().select(0, ids.clone());
            }
        }
        if !self.pads.is_empty() {
            self.pads = rows.iter().map(|&r| self.pads[r]).collect();
        }
    }
}
