//! Monosemanticity measures over prompts (SPEC section 4), per layer, from the `up_proj` output
//! z at each prompt's last real token:
//!
//! ```text
//! FD_l = 1 − mean_{i≠j} cos(z_i, z_j)          feature decorrelation (higher = more decorrelated)
//! AV_l = mean_i Var_f(z_if)                    activation variance (population variance over d_ff)
//! S_l  = mean_i (√d − ‖z_i‖₁/‖z_i‖₂)/(√d − 1)   Hoyer sparsity (0: all equal, 1: one non-zero)
//! top tokens of layer l: f* = argmax_f mean_i z_if; column f* of down_proj through the final
//!                        norm and the unembedding, the k largest logits
//! ```

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use decpo_model::Llama;
use serde::{Deserialize, Serialize};

use decpo_datasets::first_distinct;
use decpo_datasets::tokenize::TokenizedPair;

use crate::config::{RegRows, Site};
use crate::loss::decorrelation::{Activations, last_token_rows, site_rows};
use crate::train::data::PairSet;

/// FD, AV and sparsity of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerMeasure {
    pub layer: usize,
    pub fd: f64,
    pub av: f64,
    /// Hoyer sparsity (absent in results written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
}

/// The tokens a layer's most active MLP neuron writes towards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopTokens {
    pub layer: usize,
    /// f*: the `up_proj` dimension with the largest mean activation over the prompts.
    pub neuron: usize,
    pub mean_activation: f64,
    /// The k token ids with the largest logits, largest first, and those logits.
    pub ids: Vec<u32>,
    pub logits: Vec<f64>,
}

/// The `up_proj` rows `[n_prompts, d_ff]` at the last real token of each prompt, for each of
/// `layers` (in that order). Prompts run `batch` at a time, shortest first, right-padded with
/// `pad_id` and the padding masked; the row order is the sorted order (every measure here is
/// invariant to it). Panics if a prompt is empty or a layer index is out of range.
pub fn last_token_activations<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad_id: u32,
    batch: usize,
    layers: &[usize],
    device: &B::Device,
) -> Vec<Tensor<B, 2>> {
    assert!(
        prompts.iter().all(|p| !p.is_empty()),
        "every prompt needs at least one token"
    );
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut rows: Vec<Vec<Tensor<B, 2>>> = vec![Vec::new(); layers.len()];
    for chunk in order.chunks(batch.max(1)) {
        let seq = chunk.iter().map(|&i| prompts[i].len()).max().unwrap_or(1);
        let mut ids = vec![pad_id as i64; chunk.len() * seq];
        let mut mask = vec![0i64; chunk.len() * seq];
        for (r, &i) in chunk.iter().enumerate() {
            for (t, &id) in prompts[i].iter().enumerate() {
                ids[r * seq + t] = id as i64;
                mask[r * seq + t] = 1;
            }
        }
        let shape = [chunk.len(), seq];
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, shape), device);
        let out = model.forward(ids, mask.clone(), layers);
        for (l, up_proj) in out.up_proj.into_iter().enumerate() {
            rows[l].push(last_token_rows(up_proj, mask.clone()));
        }
    }
    rows.into_iter().map(|r| Tensor::cat(r, 0)).collect()
}

fn host(t: Tensor<impl Backend, 1>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 after convert")
}

/// FD of rows `z` `[n, d]`, through ‖Σ_i ẑ_i‖² = n + Σ_{i≠j} cos(z_i, z_j) (O(n·d), no n×n
/// Gram matrix). NaN when n < 2.
pub fn fd_of_rows<B: Backend>(z: Tensor<B, 2>) -> f64 {
    let n = z.dims()[0] as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let norm = z.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    let sum = (z / norm).sum_dim(0);
    let sq: f64 = host(sum.powi_scalar(2).sum()).iter().sum();
    1.0 - (sq - n) / (n * (n - 1.0))
}

/// AV of rows `z` `[n, d]`: the mean over rows of the population variance across `d`.
pub fn av_of_rows<B: Backend>(z: Tensor<B, 2>) -> f64 {
    host(z.var_bias(1).mean())[0]
}

/// Hoyer sparsity of rows `z` `[n, d]`, averaged over rows: per row (√d − ‖z‖₁/‖z‖₂)/(√d − 1),
/// 0 when every entry has the same magnitude, 1 when one entry holds it all (the paper's second
/// proxy for monosemanticity is activation sparsity). NaN when d < 2.
pub fn sparsity_of_rows<B: Backend>(z: Tensor<B, 2>) -> f64 {
    let d = z.dims()[1] as f64;
    if d < 2.0 {
        return f64::NAN;
    }
    let l1 = z.clone().abs().sum_dim(1);
    let l2 = z.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    let ratio = host((l1 / l2).mean().reshape([1]))[0];
    (d.sqrt() - ratio) / (d.sqrt() - 1.0)
}

/// FD_l, AV_l and sparsity for each of `layers` over `prompts` (see [`last_token_activations`]).
pub fn measure_layers<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad_id: u32,
    batch: usize,
    layers: &[usize],
    device: &B::Device,
) -> Vec<LayerMeasure> {
    last_token_activations(model, prompts, pad_id, batch, layers, device)
        .into_iter()
        .zip(layers)
        .map(|(z, &layer)| measure_rows(layer, z))
        .collect()
}

/// FD, AV and sparsity of rows `z` `[n, d]` of `layer`.
pub fn measure_rows<B: Backend>(layer: usize, z: Tensor<B, 2>) -> LayerMeasure {
    LayerMeasure {
        layer,
        fd: fd_of_rows(z.clone()),
        av: av_of_rows(z.clone()),
        sparsity: Some(sparsity_of_rows(z)),
    }
}

/// The `up_proj` rows of each of `layers` at a regularizer's `site` and `rows`, over the pairs of
/// `set`, `micro_batch` pairs at a time (all their rows together, not per micro-batch); the
/// number of pairs they come from. For `prompt-last`, a pair whose prompt an earlier pair had
/// is left out (it would add the same row twice). No layers when `set` has no pairs.
pub fn site_activations<B: Backend>(
    model: &Llama<B>,
    set: &PairSet,
    site: Site,
    rows: RegRows,
    layers: &[usize],
    micro_batch: usize,
    device: &B::Device,
) -> (Vec<Tensor<B, 2>>, usize) {
    let pairs: Vec<usize> = match site {
        Site::PromptLast => first_distinct(&set.pairs, usize::MAX, TokenizedPair::prompt_key),
        _ => (0..set.pairs.len()).collect(),
    };
    let mut per_layer: Vec<Vec<Tensor<B, 2>>> = vec![Vec::new(); layers.len()];
    for chunk in pairs.chunks(micro_batch.max(1)) {
        let b = set.micro_batch::<B>(chunk, device).batch;
        let out = model.forward(b.input_ids.clone(), b.attention_mask.clone(), layers);
        for (l, up_proj) in out.up_proj.into_iter().enumerate() {
            let acts = Activations {
                up_proj,
                attention_mask: b.attention_mask.clone(),
                completion_mask: b.completion_mask.clone(),
                eos_mask: b.eos_mask.clone(),
            };
            per_layer[l].push(site_rows(&acts, site, rows));
        }
    }
    let z = per_layer
        .into_iter()
        .filter(|z| !z.is_empty())
        .map(|z| Tensor::cat(z, 0))
        .collect();
    (z, pairs.len())
}

/// FD, AV and sparsity of each of `layers` at a regularizer's `site` and `rows`, over the pairs
/// of `set` (see [`site_activations`]): what the regularizer acts on, measured on held-out pairs.
pub fn site_measures<B: Backend>(
    model: &Llama<B>,
    set: &PairSet,
    site: Site,
    rows: RegRows,
    layers: &[usize],
    micro_batch: usize,
    device: &B::Device,
) -> Vec<LayerMeasure> {
    let (z, _) = site_activations(model, set, site, rows, layers, micro_batch, device);
    z.into_iter()
        .zip(layers)
        .map(|(z, &layer)| measure_rows(layer, z))
        .collect()
}

/// The top-`k` tokens of `layer`'s most active neuron, given that layer's rows `z`
/// `[n_prompts, d_ff]` (adapters, if any, are merged into `down_proj` first).
pub fn top_tokens<B: Backend>(
    model: &Llama<B>,
    layer: usize,
    z: Tensor<B, 2>,
    k: usize,
) -> TopTokens {
    let mean = host(z.mean_dim(0).squeeze_dim::<1>(0));
    let (neuron, &mean_activation) = mean
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("d_ff > 0");
    // burn's Linear weight is [in, out]: row f* of down_proj is the column f* of Hugging Face's.
    let down = model.layers[layer].mlp.down_proj.merged_weight();
    let column = down.narrow(0, neuron, 1).unsqueeze_dim::<3>(0);
    let logits = host(model.logits(model.norm.forward(column)).flatten::<1>(0, 2));
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    ids.truncate(k);
    TopTokens {
        layer,
        neuron,
        mean_activation,
        logits: ids.iter().map(|&i| logits[i]).collect(),
        ids: ids.into_iter().map(|i| i as u32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray<f32>;

    fn rows(v: Vec<f32>, n: usize) -> Tensor<B, 2> {
        let d = v.len() / n;
        Tensor::from_data(TensorData::new(v, [n, d]), &Default::default())
    }

    #[test]
    fn fd_is_one_minus_the_mean_pairwise_cosine() {
        // cos(r0, r1) = 0, cos(r0, r2) = 1/√2, cos(r1, r2) = 1/√2 → mean over i≠j = √2/3.
        let z = rows(vec![1.0, 0.0, 0.0, 2.0, 3.0, 3.0], 3);
        let want = 1.0 - 2f64.sqrt() / 3.0;
        assert!((fd_of_rows(z) - want).abs() < 1e-6);
        // Identical directions: FD 0; opposite pairs: FD 2 for two rows.
        assert!(fd_of_rows(rows(vec![1.0, 1.0, 2.0, 2.0], 2)).abs() < 1e-6);
        assert!((fd_of_rows(rows(vec![1.0, 0.0, -3.0, 0.0], 2)) - 2.0).abs() < 1e-6);
        assert!(fd_of_rows(rows(vec![1.0, 0.0], 1)).is_nan());
    }

    #[test]
    fn sparsity_is_the_mean_hoyer_measure_of_each_row() {
        // Row 0: one non-zero of 4 → 1; row 1: all magnitudes equal → 0;
        // row 2: [3, 4, 0, 0]: ‖·‖₁/‖·‖₂ = 7/5 → (2 − 1.4)/(2 − 1) = 0.6. Mean 1.6 / 3.
        let z = rows(
            vec![0.0, -5.0, 0.0, 0.0, 1.0, -1.0, 1.0, 1.0, 3.0, 4.0, 0.0, 0.0],
            3,
        );
        assert!((sparsity_of_rows(z) - 1.6 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn av_is_the_mean_population_variance_of_each_row() {
        // Row 0: [1, 3] → variance 1; row 1: [2, 6] → variance 4; mean 2.5.
        let z = rows(vec![1.0, 3.0, 2.0, 6.0], 2);
        assert!((av_of_rows(z) - 2.5).abs() < 1e-9);
    }
}
