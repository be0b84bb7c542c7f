//! Rotary position embedding tables, in Hugging Face's "rotate half" layout.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::LlamaConfig;

/// Inverse frequencies of RoPE, with Llama 3 scaling applied when configured.
///
/// Computed in f32 the way transformers does (`1 / theta^(2i/d)`), so that the angles, and the
/// logits after 30 layers, agree with it to f32 rounding.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    /// `[head_dim / 2]` inverse frequencies.
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        if let Some(s) = config.rope_scaling {
            let old_len = s.original_max_position_embeddings as f64;
            let low_freq_wavelen = old_len / s.low_freq_factor;
            let high_freq_wavelen = old_len / s.high_freq_factor;
            for f in &mut inv_freq {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen < high_freq_wavelen {
                    freq
                } else if wavelen > low_freq_wavelen {
                    freq / s.factor
                } else {
                    let smooth = (old_len / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * freq / s.factor + smooth * freq
                };
                *f = scaled as f32;
            }
        }
        Self { inv_freq }
    }

    /// The tables for one forward pass: `positions` holds `rows * seq` positions, row by row
    /// (`rows` is 1 when every row of the batch has the same positions, else the batch size).
    pub fn tables<B: Backend>(
        &self,
        positions: &[usize],
        rows: usize,
        heads: usize,
        kv_heads: usize,
        device: &B::Device,
    ) -> RopeTables<B> {
        let half = self.inv_freq.len();
        let dim = 2 * half;
        // Per position: cos of the angles twice, and the sine as rotate_half needs it, `[-sin, sin]`.
        let mut cos = Vec::with_capacity(positions.len() * dim);
        let mut sin = Vec::with_capacity(positions.len() * dim);
        for &pos in positions {
            // Angles in f32 as transformers forms them; cos/sin of that f32 value.
            let angles: Vec<f64> = self
                .inv_freq
                .iter()
                .map(|f| (pos as f32 * f) as f64)
                .collect();
            for sign in [-1.0f32, 1.0] {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| sign * a.sin() as f32));
            }
        }
        // Laid out like a projection's output `[seq, heads * head_dim]`: each position's values
        // repeated for every head, one table row per batch row (or one for all).
        let per_heads = |table: &[f32], n: usize| {
            let data: Vec<f32> = table
                .chunks(dim)
                .flat_map(|p| std::iter::repeat_n(p, n).flatten().copied())
                .collect();
            let width = data.len() / rows;
            Tensor::<B, 2>::from_data(TensorData::new(data, [rows, width]), device)
        };
        RopeTables {
            q: (per_heads(&cos, heads), per_heads(&sin, heads)),
            k: (per_heads(&cos, kv_heads), per_heads(&sin, kv_heads)),
            head_dim: dim,
        }
    }
}

/// RoPE's cos and signed sin for one forward pass, for the query heads and for the key heads,
/// each `[1 or batch, seq * heads * head_dim]`: the layout of a projection's output, so that
/// applying them is two multiplications of contiguous tensors (a `[seq, head_dim]` table
/// broadcast over `[batch, heads, seq, head_dim]` made the CPU backend walk every element by
/// strides).
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    q: (Tensor<B, 2>, Tensor<B, 2>),
    k: (Tensor<B, 2>, Tensor<B, 2>),
    head_dim: usize,
}

impl<B: Backend> RopeTables<B> {
    /// RoPE on the query projection's output `[batch, seq, heads * head_dim]`.
    pub fn queries(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        rotate(x, &self.q, self.head_dim)
    }

    /// RoPE on the key projection's output `[batch, seq, kv_heads * head_dim]`.
    pub fn keys(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        rotate(x, &self.k, self.head_dim)
    }
}

/// `x * cos + rotate_half(x) * sin` per head, `rotate_half([x1, x2]) = [-x2, x1]`, as
/// transformers computes it: the sign lives in the table (`[x2, x1] * [-sin, sin]`), which
/// rounds the same.
fn rotate<B: Backend>(
    x: Tensor<B, 3>,
    (cos, sin): &(Tensor<B, 2>, Tensor<B, 2>),
    head_dim: usize,
) -> Tensor<B, 3> {
    let [batch, seq, width] = x.dims();
    let half = head_dim / 2;
    let per_head = x.reshape([batch * seq * width / head_dim, head_dim]);
    let swapped = Tensor::cat(
        vec![
            per_head.clone().narrow(1, half, half),
            per_head.clone().narrow(1, 0, half),
        ],
        1,
    );
    let flat = |t: Tensor<B, 2>| t.reshape([batch, seq * width]);
    (flat(per_head) * cos.clone() + flat(swapped) * sin.clone()).reshape([batch, seq, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Llama3RopeScaling;

    #[test]
    fn llama3_scaling_keeps_high_scales_low_and_smooths_the_middle() {
        let mut c = LlamaConfig::tiny();
        c.head_dim = 6;
        let plain = RotaryEmbedding::new(&c).inv_freq;
        c.rope_scaling = Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        });
        let scaled = RotaryEmbedding::new(&c).inv_freq;
        // Wavelengths: 2π (between 4 and 16: smoothed), ~135 and ~2920 (> 16: divided by 8).
        let smooth = (16.0 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        let expected0 = ((1.0 - smooth) / 8.0 + smooth) as f32;
        assert!(
            (scaled[0] - expected0).abs() < 1e-7,
            "{} vs {expected0}",
            scaled[0]
        );
        assert_eq!(scaled[1], plain[1] / 8.0);
        assert_eq!(scaled[2], plain[2] / 8.0);
    }
}
