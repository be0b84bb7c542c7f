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

    /// `(cos, sin)`, each `[len, head_dim]`, for positions `start..start + len`.
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let positions: Vec<usize> = (start..start + len).collect();
        self.tables_at(&positions, device)
    }

    /// `(cos, sin)`, each `[positions.len(), head_dim]`, one row per position given.
    pub fn tables_at<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * 2 * half);
        let mut sin = Vec::with_capacity(positions.len() * 2 * half);
        for &pos in positions {
            // Angles in f32 as transformers forms them; cos/sin of that f32 value.
            let angles: Vec<f64> = self
                .inv_freq
                .iter()
                .map(|f| (pos as f32 * f) as f64)
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        let shape = [positions.len(), 2 * half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Applies RoPE to `x` `[batch, heads, seq, head_dim]` with tables `[1, 1, seq, head_dim]` (one
/// position per column) or `[batch, 1, seq, head_dim]` (one per row and column):
/// `x * cos + rotate_half(x) * sin`, `rotate_half([x1, x2]) = [-x2, x1]`.
pub fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
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
