//! One decoder block: pre-norm attention and pre-norm MLP, each with a residual.

use burn::module::Module;
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::{Bool, Tensor, backend::Backend};

use crate::attention::LlamaAttention;
use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::linear::Projection;
use crate::mlp::LlamaMlp;
use crate::names::PROJECTIONS;
use crate::precision::rms_norm;
use crate::rope::RopeTables;

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: LlamaAttention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: LlamaMlp<B>,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    pub fn init(c: &LlamaConfig, device: &B::Device) -> Self {
        let norm = || {
            RmsNormConfig::new(c.hidden_size)
                .with_epsilon(c.rms_norm_eps)
                .init(device)
        };
        Self {
            input_layernorm: norm(),
            self_attn: LlamaAttention::init(
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                device,
            ),
            post_attention_layernorm: norm(),
            mlp: LlamaMlp::init(c.hidden_size, c.intermediate_size, device),
        }
    }

    /// `x` `[batch, seq, hidden]` -> (`[batch, seq, hidden]`, up_proj output `[batch, seq, d_ff]`).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let attn = self.self_attn.forward(
            rms_norm(&self.input_layernorm, x.clone()),
            rope,
            mask,
            cache,
        );
        let x = x + attn;
        let (mlp, up) = self
            .mlp
            .forward(rms_norm(&self.post_attention_layernorm, x.clone()));
        (x + mlp, up)
    }

    /// The seven projections with their names, in the order of [`PROJECTIONS`].
    pub fn projections(&self) -> [(&'static str, &Projection<B>); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        named([
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ])
    }

    pub fn projections_mut(&mut self) -> [(&'static str, &mut Projection<B>); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        named([
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ])
    }
}

/// Pairs the projections, given in the order of [`PROJECTIONS`], with their names.
fn named<T>(projections: [T; 7]) -> [(&'static str, T); 7] {
    let mut names = PROJECTIONS.iter().map(|p| p.name);
    projections.map(|p| (names.next().expect("seven names"), p))
}
