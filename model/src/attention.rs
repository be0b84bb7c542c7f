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
        let q = rope.queries(self.q_proj.forward(x.clone()));
        let k = rope.keys(self.k_proj.forward(x.clone()));
        let v = self.v_proj.forward(x);
        let out = match cache {
            None => fused::attention(q, k, v, mask.clone(), self.head_dim),
            Some((cache, layer)) => {
                let heads = |t| fused::split_heads(t, self.head_dim);
                let (k, v) = cache.extend(layer, heads(k), heads(v));
                fused::grouped_attention(heads(q), k, v, mask.clone())
            }
        };
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
