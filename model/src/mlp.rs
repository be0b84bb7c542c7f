//! The SwiGLU MLP, written out so that the `up_proj` output (DecPO's activation site) is visible.

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Tensor, backend::Backend};

use crate::fused;
use crate::linear::Projection;

/// `down_proj(silu(gate_proj(x)) * up_proj(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    pub gate_proj: Projection<B>,
    pub up_proj: Projection<B>,
    pub down_proj: Projection<B>,
}

impl<B: Backend> LlamaMlp<B> {
    pub fn init(hidden: usize, intermediate: usize, device: &B::Device) -> Self {
        let linear = |i, o| Projection::new(LinearConfig::new(i, o).with_bias(false).init(device));
        Self {
            gate_proj: linear(hidden, intermediate),
            up_proj: linear(hidden, intermediate),
            down_proj: linear(intermediate, hidden),
        }
    }

    /// `x`: `[batch, seq, hidden]` -> (output `[batch, seq, hidden]`, up_proj output `[batch, seq, d_ff]`).
    pub fn forward(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let up = self.up_proj.forward(x.clone());
        let gated = fused::swiglu(self.gate_proj.forward(x), up.clone());
        (self.down_proj.forward(gated), up)
    }
}
