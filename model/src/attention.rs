//! Grouped-query self-attention with RoPE.

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Bool, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::fused;
use crate::linear::Projection;
use crate::rope::RopeTables;

#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    pub q_proj: Projection<B>,
    pub k_proj: Projection<B>,
    pub v_proj: Projection<B>,
    pub o_proj: Projection<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> LlamaAttention<B> {
    pub fn init(
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let linear = |i, o| Projection::new(LinearConfig::new(i, o).with_bias(false).init(device));
        Self {
            q_proj: linear(hidden, heads * head_dim),
            k_proj: linear(hidden, kv_heads * head_dim),
            v_proj: linear(hidden, kv_heads * head_dim),
            o_proj: linear(heads * head_dim, hidden),
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
        }
    }

    /// - `x`: `[batch, seq, hidden]`
    /// - `rope`: RoPE's tables for this chunk's positions
    /// - `mask`: `[batch, kv_heads, groups * seq, kv_len]` (see [`stack_mask`]), true where
    ///   attention is forbidden
    /// - `cache`: `(cache, layer)` when generating incrementally
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let heads =
            |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = heads(rope.queries(self.q_proj.forward(x.clone())), self.num_heads);
        let k = heads(rope.keys(self.k_proj.forward(x.clone())), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.extend(layer, k, v),
            None => (k, v),
        };
        // Grouped-query attention without copying keys and values per query head: query head h
        // reads kv head h / groups, so the `groups` query heads of one kv head are stacked as
        // `groups * seq` query rows against it (the mask comes stacked the same way).
        let groups = self.num_heads / self.num_kv_heads;
        let q = q.reshape([batch, self.num_kv_heads, groups * seq, self.head_dim]);
        let out = fused::attention(q, k, v, mask.clone());
        let out = out
            .reshape([batch, self.num_heads, seq, self.head_dim])
            .swap_dims(1, 2)
            .reshape([batch, seq, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}

/// The attention mask `[batch, 1, seq, kv_len]` laid out for grouped-query attention's stacked
/// query rows: `[batch, kv_heads, groups * seq, kv_len]`, row `g * seq + i` of kv head `h` being
/// query position `i` of query head `h * groups + g`. Built once per forward and shared by every
/// layer (expanding it in each layer copied it once per layer).
pub fn stack_mask<B: Backend>(
    mask: Tensor<B, 4, Bool>,
    kv_heads: usize,
    groups: usize,
) -> Tensor<B, 4, Bool> {
    let [batch, _, seq, kv_len] = mask.dims();
    mask.unsqueeze_dim::<5>(1)
        .expand([batch, kv_heads, groups, seq, kv_len])
        .reshape([batch, kv_heads, groups * seq, kv_len])
}
