//! Numeric parity with transformers on a tiny random Llama: GQA, untied head, explicit head_dim,
//! odd sizes and llama3 RoPE scaling. Fixture: scripts/make_tiny_fixture.py.

mod common;

use burn::tensor::Tensor;
use common::*;
use decpo_model::{completion_logps, load_pretrained};

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

/// Left-padded batches: three prompts of different lengths (prefixes of the fixture's rows) run
/// together through the cache, then two more tokens each; every row's logits are transformers'
/// at that row's own positions. Between the steps the batch drops and reorders rows.
#[test]
fn a_left_padded_cached_batch_gives_every_row_transformers_logits() {
    let golden = read_json("tiny-llama-golden.json");
    let model = load_pretrained::<B>(&fixture("tiny-llama"), &Default::default())
        .unwrap()
        .model;
    let vocab = model.config.vocab_size;
    let rows: Vec<Vec<i64>> = (0..3).map(|r| ints(&golden["input_ids"][r])).collect();
    let want: Vec<Vec<f32>> = (0..3).map(|r| floats(&golden["logits"][r])).collect();
    let at = |r: usize, t: usize| want[r][t * vocab..(t + 1) * vocab].to_vec();
    let lens = [10usize, 6, 3];
    let pads: Vec<usize> = lens.iter().map(|l| 10 - l).collect();
    let ids: Vec<i64> = (0..3)
        .flat_map(|r| std::iter::repeat_n(0, pads[r]).chain(rows[r][..lens[r]].iter().copied()))
        .collect();
    let matrix = |ids: Vec<i64>, n: usize, w: usize| {
        Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [n, w]),
            &Default::default(),
        )
    };
    // Room for 4 columns only: the first call grows the buffers.
    let mut cache = model.new_padded_cache(pads, 4);
    let got = to_vec(model.forward_cached(matrix(ids, 3, 10), &mut cache));
    let expected: Vec<f32> = (0..3).flat_map(|r| at(r, lens[r] - 1)).collect();
    let e = rel_err(&got, &expected);
    assert!(e < TOL, "padded prefill: relative error {e}");

    let next: Vec<i64> = (0..3).map(|r| rows[r][lens[r]]).collect();
    let got = to_vec(model.forward_cached(matrix(next, 3, 1), &mut cache));
    let expected: Vec<f32> = (0..3).flat_map(|r| at(r, lens[r])).collect();
    let e = rel_err(&got, &expected);
    assert!(e < TOL, "first padded step: relative error {e}");

    // Row 1 leaves; rows 2 and 0 go on, in that order.
    cache.retain_rows(&[2, 0]);
    let next = vec![rows[2][lens[2] + 1], rows[0][lens[0] + 1]];
    let got = to_vec(model.forward_cached(matrix(next, 2, 1), &mut cache));
    let expected: Vec<f32> = [2, 0].iter().flat_map(|&r| at(r, lens[r] + 1)).collect();
    let e = rel_err(&got, &expected);
    assert!(e < TOL, "after retaining rows 2 and 0: relative error {e}");
}

/// Batched generation gives every prompt the tokens it gets alone, greedy and sampled, with rows
/// that stop early (at a stop token taken from one prompt's own continuation) and rows that don't.
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
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
}
