//! Numeric parity with transformers on a tiny random Llama: GQA, untied head, explicit head_dim,
//! odd sizes and llama3 RoPE scaling. Fixture: scripts/make_tiny_fixture.py.

mod common;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use common::*;
use decpo_model::{SharedPrompts, completion_logps, load_pretrained, prefill};

const TOL: f32 = 1e-4;

#[test]
fn logits_hidden_activations_and_logps_match_transformers() {
    let golden = read_json("tiny-llama-golden.json");
    let model = load_pretrained::<B>(&fixture("tiny-llama"), &Default::default())
        .expect("tiny fixture loads")
        .model;
    let ids = int_matrix::<B>(&golden["input_ids"]);
    let mask = int_matrix::<B>(&golden["attention_mask"]);
    let completion = int_matrix::<B>(&golden["completion_mask"]);
    let layer = golden["up_proj_layer"].as_u64().unwrap() as usize;
    let attention: Vec<i64> = ints(&golden["attention_mask"]);

    let out = model.forward(ids.clone(), mask.clone(), &[layer]);
    let real = |values: Vec<f32>, width: usize| -> Vec<f32> {
        // Only real (non-padding) positions are compared.
        values
            .chunks(width)
            .zip(&attention)
            .filter(|(_, m)| **m == 1)
            .flat_map(|(row, _)| row.to_vec())
            .collect()
    };
    let hidden_width = model.config.hidden_size;
    let vocab = model.config.vocab_size;
    let ff = model.config.intermediate_size;
    let e = rel_err(
        &real(to_vec(out.hidden.clone()), hidden_width),
        &real(floats(&golden["hidden"]), hidden_width),
    );
    assert!(e < TOL, "hidden: relative error {e}");
    let e = rel_err(
        &real(to_vec(out.up_proj[0].clone()), ff),
        &real(floats(&golden["up_proj"]), ff),
    );
    assert!(e < TOL, "up_proj: relative error {e}");
    let logits = model.logits(out.hidden.clone());
    let e = rel_err(
        &real(to_vec(logits), vocab),
        &real(floats(&golden["logits"]), vocab),
    );
    assert!(e < TOL, "logits: relative error {e}");

    for chunk in [1, 5, 64] {
        let logps = completion_logps(
            &model,
            out.hidden.clone(),
            ids.clone(),
            completion.clone(),
            chunk,
        );
        assert_close_each(
            &to_vec(logps.sum),
            &floats(&golden["logps_sum"]),
            TOL,
            "logps_sum",
        );
        assert_close_each(
            &to_vec(logps.mean),
            &floats(&golden["logps_mean"]),
            TOL,
            "logps_mean",
        );
    }
}

#[test]
fn gradients_of_summed_logps_match_transformers() {
    let golden = read_json("tiny-llama-golden.json");
    let model = load_pretrained::<AD>(&fixture("tiny-llama"), &Default::default())
        .expect("tiny fixture loads")
        .model;
    let ids = int_matrix::<AD>(&golden["input_ids"]);
    let mask = int_matrix::<AD>(&golden["attention_mask"]);
    let completion = int_matrix::<AD>(&golden["completion_mask"]);
    let out = model.forward(ids.clone(), mask, &[]);
    let logps = completion_logps(&model, out.hidden, ids, completion, 4);
    let grads = logps.sum.sum().backward();

    // burn stores projections [in, out]; the fixture has PyTorch's [out, in].
    let up: Tensor<B, 2> = model.layers[0]
        .mlp
        .up_proj
        .base
        .weight
        .grad(&grads)
        .expect("up_proj grad");
    let up = to_vec(up.transpose());
    let e = rel_err(&up, &floats(&golden["grad_check"]["grad_up_proj_layer0"]));
    assert!(e < 1e-4, "grad up_proj: relative error {e}");
    let embed: Tensor<B, 2> = model
        .embed_tokens
        .weight
        .grad(&grads)
        .expect("embedding grad");
    let e = rel_err(
        &to_vec(embed),
        &floats(&golden["grad_check"]["grad_embed_tokens"]),
    );
    assert!(e < 1e-4, "grad embed_tokens: relative error {e}");
}

#[test]
fn cached_generation_path_matches_the_training_forward() {
    let golden = read_json("tiny-llama-golden.json");
    let model = load_pretrained::<B>(&fixture("tiny-llama"), &Default::default())
        .unwrap()
        .model;
    // Row 0 is unpadded: feed it token by token through the cache and compare every position's
    // logits with the transformers fixture.
    let row: Vec<i64> = ints(&golden["input_ids"][0]);
    let want = floats(&golden["logits"][0]);
    let vocab = model.config.vocab_size;
    let mut cache = model.new_cache(2); // small: the steps grow it
    // A 3-token first chunk exercises the multi-token cached path.
    let first = Tensor::<B, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(row[..3].to_vec(), [1, 3]),
        &Default::default(),
    );
    let mut got = to_vec(model.forward_cached(first, &mut cache));
    let mut expected = want[2 * vocab..3 * vocab].to_vec();
    for (t, &id) in row.iter().enumerate().skip(3) {
        let x = Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![id], [1, 1]),
            &Default::default(),
        );
        got.extend(to_vec(model.forward_cached(x, &mut cache)));
        expected.extend_from_slice(&want[t * vocab..(t + 1) * vocab]);
    }
    let e = rel_err(&got, &expected);
    assert!(e < TOL, "cached logits: relative error {e}");
}

/// Batches through the cache: three prompts of different lengths run together ([`prefill`]),
/// then two more tokens each; every row's logits are transformers' at that row's own positions.
/// Between the steps the batch drops and reorders rows. Once with prompts that differ from the
/// first token (left padding only), once with prefixes of one row (their first 4 tokens computed
/// once and shared, the rest padded after them).
///
/// On the test backend (the cache written in place) and on burn-flex, the binaries' CPU backend,
/// whose cache concatenates instead (see `model/src/cache.rs`).
#[test]
fn a_padded_cached_batch_gives_every_row_transformers_logits() {
    padded_cached_batch::<B>();
    padded_cached_batch::<burn::backend::Flex>();
}

fn padded_cached_batch<B: Backend>() {
    let golden = read_json("tiny-llama-golden.json");
    let model = load_pretrained::<B>(&fixture("tiny-llama"), &Default::default())
        .unwrap()
        .model;
    let device = Default::default();
    let vocab = model.config.vocab_size;
    let rows: Vec<Vec<i64>> = (0..3).map(|r| ints(&golden["input_ids"][r])).collect();
    let want: Vec<Vec<f32>> = (0..3).map(|r| floats(&golden["logits"][r])).collect();
    let at = |(r, t): (usize, usize)| want[r][t * vocab..(t + 1) * vocab].to_vec();
    let column = |ids: Vec<i64>| {
        let n = ids.len();
        Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [n, 1]),
            &device,
        )
    };
    for case in [[(0, 10), (1, 6), (2, 3)], [(0, 10), (0, 7), (0, 5)]] {
        let prompts: Vec<Vec<u32>> = case
            .iter()
            .map(|&(r, n)| rows[r][..n].iter().map(|&t| t as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        // No room reserved: the steps grow the buffers.
        let (mut cache, logits) = prefill(&model, &refs, 0, &device);
        let expected: Vec<f32> = case.iter().flat_map(|&(r, n)| at((r, n - 1))).collect();
        let e = rel_err(&to_vec(logits), &expected);
        assert!(e < TOL, "{case:?} prefill: relative error {e}");

        let next: Vec<i64> = case.iter().map(|&(r, n)| rows[r][n]).collect();
        let got = to_vec(model.forward_cached(column(next), &mut cache));
        let expected: Vec<f32> = case.iter().flat_map(|&(r, n)| at((r, n))).collect();
        let e = rel_err(&got, &expected);
        assert!(e < TOL, "{case:?} first step: relative error {e}");

        // Row 1 leaves; rows 2 and 0 go on, in that order.
        cache.retain_rows(&[2, 0]);
        let kept = [case[2], case[0]];
        let next: Vec<i64> = kept.iter().map(|&(r, n)| rows[r][n + 1]).collect();
        let got = to_vec(model.forward_cached(column(next), &mut cache));
        let expected: Vec<f32> = kept.iter().flat_map(|&(r, n)| at((r, n + 1))).collect();
        let e = rel_err(&got, &expected);
        assert!(
            e < TOL,
            "{case:?} after retaining rows 2 and 0: relative error {e}"
        );
    }
}

/// Batched generation gives every prompt the tokens it gets alone, greedy and sampled, with rows
/// that stop early (at a stop token taken from one prompt's own continuation) and rows that don't.
/// On the test backend and on burn-flex (see above).
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    batched_generation::<B>();
    batched_generation::<burn::backend::Flex>();
}

fn batched_generation<B: Backend>() {
    let golden = read_json("tiny-llama-golden.json");
    let model = load_pretrained::<B>(&fixture("tiny-llama"), &Default::default())
        .unwrap()
        .model;
    let device = Default::default();
    let prompts: Vec<Vec<u32>> = [(0, 13), (1, 9), (2, 5), (0, 2)]
        .iter()
        .map(|&(r, n)| {
            ints(&golden["input_ids"][r])[..n]
                .iter()
                .map(|&t| t as u32)
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let max_new = 10;
    let greedy = decpo_model::SamplingConfig::default();
    // A token prompt 1 emits third (and not before) stops it there.
    let alone = decpo_model::generate(&model, &prompts[1], max_new, &[], &greedy, &device);
    let stop = alone[2];
    assert!(
        !alone[..2].contains(&stop),
        "pick another stop token: {alone:?}"
    );
    for config in [
        greedy.clone(),
        decpo_model::SamplingConfig {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        },
    ] {
        let batched =
            decpo_model::generate_batch(&model, &refs, max_new, &[stop], &config, &device);
        let one_by_one: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| decpo_model::generate(&model, p, max_new, &[stop], &config, &device))
            .collect();
        assert_eq!(batched, one_by_one, "temperature {}", config.temperature);
        if config.temperature == 0.0 {
            assert_eq!(batched[1].len(), 3, "prompt 1 stops at its third token");
        }
        assert!(
            batched.iter().any(|r| r.len() == max_new),
            "some row runs to the end: {batched:?}"
        );
    }
    // Prompts with a common prefix (row 0's first 5 tokens), which the batch computes once.
    let shared: Vec<Vec<u32>> = [13, 6, 9, 7]
        .iter()
        .map(|&n| prompts[0][..n].to_vec())
        .collect();
    let refs: Vec<&[u32]> = shared.iter().map(Vec::as_slice).collect();
    for config in [
        greedy.clone(),
        decpo_model::SamplingConfig {
            temperature: 1.0,
            top_p: 0.9,
            seed: 3,
        },
    ] {
        let batched = decpo_model::generate_batch(&model, &refs, max_new, &[], &config, &device);
        let one_by_one: Vec<Vec<u32>> = shared
            .iter()
            .map(|p| decpo_model::generate(&model, p, max_new, &[], &config, &device))
            .collect();
        assert_eq!(
            batched, one_by_one,
            "shared prefix, temperature {}",
            config.temperature
        );
    }
}

/// A preference batch with each pair's prompt run once (`forward_pairs`) gives the padded
/// forward's final hidden states and captured activations at every real token, on a batch whose
/// pairs share prompts of different lengths and whose rows are padded differently (the batch of
/// scripts/make_loss_fixture.py). On the test backend and on burn-flex.
#[test]
fn shared_prompts_give_the_padded_forward_at_every_real_token() {
    shared_prompts::<B>();
    shared_prompts::<burn::backend::Flex>();
}

fn shared_prompts<B: Backend>() {
    let golden = read_json("decpo-loss-golden.json");
    let model = load_pretrained::<B>(&fixture("tiny-llama"), &Default::default())
        .unwrap()
        .model;
    let batch = fixture_batch::<B>(&golden);
    // 2 pairs of 13 columns; prompts of 4 and 3 tokens: packed rows of 13 + 13 - 4 columns.
    let plan = SharedPrompts::plan(&batch).expect("the pairs share prompts");
    assert_eq!(plan.columns(), (2 * 22, 4 * 13));

    let capture = [0, 2];
    let padded = model.forward(
        batch.input_ids.clone(),
        batch.attention_mask.clone(),
        &capture,
    );
    let shared = model.forward_pairs(&batch, &capture);
    let real = to_vec(batch.attention_mask.clone().float());
    let at_real = |t: Tensor<B, 3>| -> Vec<f32> {
        let width = t.dims()[2];
        to_vec(t)
            .chunks(width)
            .zip(&real)
            .filter(|(_, m)| **m > 0.0)
            .flat_map(|(row, _)| row.to_vec())
            .collect()
    };
    let e = rel_err(&at_real(shared.hidden), &at_real(padded.hidden));
    assert!(e < 1e-5, "final hidden states: relative error {e}");
    for (i, (s, p)) in shared.up_proj.into_iter().zip(padded.up_proj).enumerate() {
        let e = rel_err(&at_real(s), &at_real(p));
        assert!(
            e < 1e-5,
            "up_proj of layer {}: relative error {e}",
            capture[i]
        );
    }
    let up = model.up_proj_of_pairs(&batch, 2);
    let want = model.up_proj_of(batch.input_ids.clone(), batch.attention_mask.clone(), 2);
    let e = rel_err(&at_real(up), &at_real(want));
    assert!(e < 1e-5, "up_proj_of_pairs: relative error {e}");
}
