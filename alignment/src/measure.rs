//! Monosemanticity measures over prompts (SPEC section 4): per-layer feature decorrelation of the
//! `up_proj` outputs at each prompt's last real token.

use burn::tensor::{ElementConversion, Int, Tensor, TensorData, backend::Backend};
use decpo_model::Llama;

use crate::loss::decorrelation::{Activations, feature_decorrelation, last_token_rows};

/// FD_l for every layer over `prompts` (token ids), run `batch` prompts at a time (right-padded
/// with `pad_id`, padding masked).
pub fn fd_per_layer<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad_id: u32,
    batch: usize,
    device: &B::Device,
) -> Vec<f64> {
    let layers: Vec<usize> = (0..model.config.num_hidden_layers).collect();
    let mut rows: Vec<Vec<Tensor<B, 2>>> = vec![Vec::new(); layers.len()];
    for chunk in prompts.chunks(batch.max(1)) {
        let seq = chunk.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = vec![pad_id as i64; chunk.len() * seq];
        let mut mask = vec![0i64; chunk.len() * seq];
        for (r, p) in chunk.iter().enumerate() {
            for (t, &id) in p.iter().enumerate() {
                ids[r * seq + t] = id as i64;
                mask[r * seq + t] = 1;
            }
        }
        let shape = [chunk.len(), seq];
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, shape), device);
        let out = model.forward(ids, mask.clone(), &layers);
        for (l, up_proj) in out.up_proj.into_iter().enumerate() {
            let acts = Activations {
                up_proj,
                attention_mask: mask.clone(),
                completion_mask: mask.clone(),
            };
            rows[l].push(last_token_rows(&acts));
        }
    }
    rows.into_iter()
        .map(|r| {
            if r.is_empty() {
                return f64::NAN;
            }
            let z = Tensor::cat(r, 0);
            feature_decorrelation(z).into_scalar().elem::<f64>()
        })
        .collect()
}
