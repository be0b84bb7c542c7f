//! Text generation with the KV cache: greedy, or temperature + nucleus (top-p) sampling.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cache::KvCache;
use crate::llama::Llama;

/// Prompts decoded together in one batch by the binaries (generation, and the judge's questions).
pub const GENERATION_BATCH: usize = 32;

/// How to pick the next token.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks a token from `logits` `[vocab]`.
pub fn sample_token(logits: &[f32], config: &SamplingConfig, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0 as u32
    };
    if config.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / config.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Smallest prefix whose mass reaches top_p (at least one token).
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, p) in &probs {
        kept += 1;
        mass += p / total;
        if mass >= config.top_p {
            break;
        }
    }
    probs.truncate(kept);
    let kept_mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * kept_mass;
    for (id, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *id;
        }
    }
    probs.last().map(|p| p.0).unwrap_or_else(argmax)
}

/// Continues `prompt` (non-empty) by up to `max_new_tokens`, stopping after any of `stop_ids`.
/// Returns the new token ids (a stop token included).
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
    config: &SamplingConfig,
    device: &B::Device,
) -> Vec<u32> {
    generate_batch(model, &[prompt], max_new_tokens, stop_ids, config, device)
        .pop()
        .expect("one row per prompt")
}

/// Runs `prompts` (each non-empty) through a new cache as one batch, with room for `room` more
/// columns, and returns the cache and the logits after every prompt's last token, `[batch,
/// vocab]`. The prompts' common prefix (say a chat template's system turn; at most all but the
/// last token of the shortest) is computed once and shared by every row; the rest of each prompt
/// follows it, padded on the left to the longest.
pub fn prefill<B: Backend>(
    model: &Llama<B>,
    prompts: &[&[u32]],
    room: usize,
    device: &B::Device,
) -> (KvCache<B>, Tensor<B, 2>) {
    assert!(
        !prompts.is_empty() && prompts.iter().all(|p| !p.is_empty()),
        "prefill: every prompt needs a token"
    );
    let ids = |ids: Vec<i64>, rows: usize| {
        let width = ids.len() / rows;
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, width]), device)
    };
    let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
    let shared = if prompts.len() == 1 {
        0
    } else {
        (0..shortest - 1)
            .take_while(|&i| prompts.iter().all(|p| p[i] == prompts[0][i]))
            .count()
    };
    let longest = prompts.iter().map(|p| p.len() - shared).max().unwrap_or(0);
    let mut cache = model.new_cache(shared + longest + room);
    if shared > 0 {
        let prefix = prompts[0][..shared].iter().map(|&t| t as i64).collect();
        model.forward_cached(ids(prefix, 1), &mut cache);
        cache.repeat_row(prompts.len());
    }
    let pads: Vec<usize> = prompts
        .iter()
        .map(|p| longest - (p.len() - shared))
        .collect();
    let rest: Vec<i64> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| {
            std::iter::repeat_n(0, pad).chain(p[shared..].iter().map(|&t| t as i64))
        })
        .collect();
    cache.pad_next(pads);
    let logits = model.forward_cached(ids(rest, prompts.len()), &mut cache);
    (cache, logits)
}

/// Continues every prompt (each non-empty) together in one batch (see [`prefill`]): each row
/// stops at its own stop token and leaves the batch. Row `i` samples from its own generator
/// seeded with `config.seed`, so its tokens are those [`generate`] gives for `prompts[i]` alone
/// (up to the float rounding of a wider batch).
pub fn generate_batch<B: Backend>(
    model: &Llama<B>,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    stop_ids: &[u32],
    config: &SamplingConfig,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::with_capacity(max_new_tokens); prompts.len()];
    if max_new_tokens == 0 || prompts.is_empty() {
        return out;
    }
    let (mut cache, mut logits) = prefill(model, prompts, max_new_tokens, device);
    let mut rngs: Vec<StdRng> = prompts
        .iter()
        .map(|_| StdRng::seed_from_u64(config.seed))
        .collect();
    // The batch's rows, as indices into `prompts`.
    let mut rows: Vec<usize> = (0..prompts.len()).collect();
    for step in 0..max_new_tokens {
        let vocab = logits.dims()[1];
        let values = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 after convert");
        let mut kept = Vec::with_capacity(rows.len());
        let mut next = Vec::with_capacity(rows.len());
        for (at, &row) in rows.iter().enumerate() {
            let token = sample_token(
                &values[at * vocab..(at + 1) * vocab],
                config,
                &mut rngs[row],
            );
            out[row].push(token);
            if !stop_ids.contains(&token) {
                kept.push(at);
                next.push(token as i64);
            }
        }
        if kept.is_empty() || step + 1 == max_new_tokens {
            break;
        }
        if kept.len() < rows.len() {
            cache.retain_rows(&kept);
            rows = kept.iter().map(|&at| rows[at]).collect();
        }
        let ids = TensorData::new(next, [rows.len(), 1]);
        logits = model.forward_cached(Tensor::<B, 2, Int>::from_data(ids, device), &mut cache);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities ~ [0.6, 0.3, 0.1]: top_p 0.5 keeps only token 0, whatever the seed.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let config = SamplingConfig {
            temperature: 1.0,
            top_p: 0.5,
            seed: 0,
        };
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..200).all(|_| sample_token(&logits, &config, &mut rng) == 0));
        // With top_p 1 all three appear, in roughly their proportions.
        let config = SamplingConfig {
            top_p: 1.0,
            ..config
        };
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[sample_token(&logits, &config, &mut rng) as usize] += 1;
        }
        assert!((counts[0] as f64 / 3000.0 - 0.6).abs() < 0.05, "{counts:?}");
        assert!((counts[2] as f64 / 3000.0 - 0.1).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            sample_token(&[0.1, 3.0, -1.0], &SamplingConfig::default(), &mut rng),
            1
        );
    }
}
