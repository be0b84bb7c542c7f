//! Completion log-probabilities: the hot path of every preference-optimisation step.

use burn::tensor::{DType, Int, Tensor, backend::Backend};

use crate::fused::unembed_logprobs;
use crate::llama::Llama;
use crate::precision::f32_mask;

/// A right-padded batch of sequences with their completion tokens marked, `[rows, seq]` each: the
/// input of a preference step (rows `0..B` chosen, `B..2B` rejected).
#[derive(Debug, Clone)]
pub struct CompletionBatch<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// 1 on completion tokens, 0 on prompt and padding.
    pub completion_mask: Tensor<B, 2, Int>,
    /// 1 on a completion's final EOS token (absent when the completion was truncated), 0
    /// elsewhere: what the regularizer's sites leave out or point at.
    pub eos_mask: Tensor<B, 2, Int>,
}

/// Per-sequence log-probabilities of the completion tokens.
#[derive(Debug, Clone)]
pub struct SequenceLogps<B: Backend> {
    /// Σ_t log p(token_t | tokens_<t) over completion tokens, `[batch]`.
    pub sum: Tensor<B, 1>,
    /// `sum` divided by the number of completion tokens (at least 1), `[batch]`.
    pub mean: Tensor<B, 1>,
    /// Number of completion tokens, `[batch]`.
    pub count: Tensor<B, 1>,
    /// log p of every next token, `[batch, seq - 1]` (position t scores token t + 1), unmasked
    /// within the span of scored positions (see [`completion_logps`]), 0 outside it.
    pub per_token: Tensor<B, 2>,
}

/// Log-probs of the tokens marked in `completion_mask`, from the final hidden states.
///
/// - `hidden`: `[batch, seq, hidden]` from [`Llama::forward`]
/// - `input_ids`: `[batch, seq]`
/// - `completion_mask`: `[batch, seq]`, 1 on completion tokens; position 0 is never scored since
///   token t is predicted by the logits at t - 1
/// - `chunk`: positions unembedded at a time; only `[batch, chunk, vocab]` logits exist at once in
///   the forward pass instead of `[batch, seq, vocab]`
///
/// Only the positions from the first to the last that predicts a marked token in some row are
/// unembedded: a prompt's positions never reach the vocabulary-sized matmul (with long prompts,
/// most of a step's unembedding). log p = logit[target] - logsumexp(logits), without a full
/// log-softmax tensor. The logits are cast to f32 before the log-softmax, and every output is f32
/// (see [`crate::precision`]).
pub fn completion_logps<B: Backend>(
    model: &Llama<B>,
    hidden: Tensor<B, 3>,
    input_ids: Tensor<B, 2, Int>,
    completion_mask: Tensor<B, 2, Int>,
    chunk: usize,
) -> SequenceLogps<B> {
    let [batch, seq, width] = hidden.dims();
    let scored = seq.saturating_sub(1);
    let device = hidden.device();
    let mask = f32_mask(completion_mask.narrow(1, 1, scored));
    let span = scored_span(&mask);
    let chunk = chunk.max(1);
    let zeros = |n: usize| Tensor::<B, 2>::zeros([batch, n], (&device, DType::F32));
    let mut pieces = Vec::new();
    if span.start > 0 {
        pieces.push(zeros(span.start));
    }
    let mut start = span.start;
    while start < span.end {
        let len = chunk.min(span.end - start);
        let chunk = hidden.clone().narrow(1, start, len);
        let rows = chunk.clone().reshape([batch * len, width]);
        let targets = input_ids
            .clone()
            .narrow(1, start + 1, len)
            .reshape([batch * len]);
        let weight = model.unembedding(&rows);
        let logits = || {
            let logits = model.logits(chunk);
            let vocab = logits.dims()[2];
            logits.reshape([batch * len, vocab])
        };
        let logp = unembed_logprobs(rows, weight, targets, logits);
        pieces.push(logp.reshape([batch, len]));
        start += len;
    }
    if span.end < scored {
        pieces.push(zeros(scored - span.end));
    }
    let per_token = if pieces.is_empty() {
        zeros(scored)
    } else {
        Tensor::cat(pieces, 1)
    };
    let count = mask.clone().sum_dim(1).reshape([batch]);
    let sum = (per_token.clone() * mask).sum_dim(1).reshape([batch]);
    let mean = sum.clone() / count.clone().clamp_min(1.0);
    SequenceLogps {
        sum,
        mean,
        count,
        per_token,
    }
}

/// The positions `[first, last + 1)` where some row of `mask` `[batch, scored]` is set (empty
/// when none is). Reads the mask back from the device: one small transfer per call.
fn scored_span<B: Backend>(mask: &Tensor<B, 2>) -> std::ops::Range<usize> {
    let any: Vec<f32> = mask
        .clone()
        .sum_dim(0)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 mask");
    let first = any.iter().position(|&v| v > 0.0);
    let last = any.iter().rposition(|&v| v > 0.0);
    match (first, last) {
        (Some(a), Some(b)) => a..b + 1,
        _ => 0..0,
    }
}
