//! Monosemanticity measures and held-out evaluation on the real SmolLM2-135M-Instruct, against
//! transformers (fixture: scripts/make_measures_fixture.py): FD and AV of every layer over six
//! cognitive-reframing prompts, the top tokens of the most active neuron, and the completion
//! log-probs `evaluate` reports for four real pairs (tokenized by the project's data path).

mod common;

use std::sync::OnceLock;

use common::*;
use decpo_alignment::evaluate::{evaluate_pairs, summarize};
use decpo_alignment::measure::{last_token_activations, measure_layers, site_measures, top_tokens};
use decpo_alignment::{LossType, ObjectiveConfig, RegRows, Regularizer, Site};
use decpo_datasets::{BatchIds, Task, TokenizeConfig, load_pairs, tokenize_pairs};
use decpo_model::{Pretrained, load_pretrained};
use serde_json::Value;

fn smollm2() -> &'static Pretrained<B> {
    static MODEL: OnceLock<Pretrained<B>> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_pretrained::<B>(&smollm2_path(), &Default::default()).expect("SmolLM2 loads")
    })
}

fn prompts(golden: &Value) -> Vec<Vec<u32>> {
    golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ints(&p["ids"]).iter().map(|&i| i as u32).collect())
        .collect()
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-3)
}

#[test]
fn fd_and_av_of_every_layer_match_transformers() {
    let golden = read_json("smollm2-measures-golden.json");
    let p = smollm2();
    let tok = p.tokenizer.as_ref().unwrap();
    for prompt in golden["prompts"].as_array().unwrap() {
        let ours: Vec<i64> = tok
            .encode(prompt["text"].as_str().unwrap(), true)
            .unwrap()
            .iter()
            .map(|&i| i as i64)
            .collect();
        assert_eq!(
            ours,
            ints(&prompt["ids"]),
            "token ids of {}",
            prompt["text"]
        );
    }
    let layers: Vec<usize> = (0..p.model.config.num_hidden_layers).collect();
    // Batches of 4 prompts of 10 to 37 tokens: the padding must be masked out.
    let got = measure_layers(
        &p.model,
        &prompts(&golden),
        2,
        4,
        &layers,
        &Default::default(),
    );
    let want = golden["layers"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let (fd, av) = (w["fd"].as_f64().unwrap(), w["av"].as_f64().unwrap());
        assert!(
            close(g.fd, fd, 1e-4),
            "FD of layer {}: {} vs {fd}",
            g.layer,
            g.fd
        );
        assert!(
            close(g.av, av, 1e-4),
            "AV of layer {}: {} vs {av}",
            g.layer,
            g.av
        );
    }
}

#[test]
fn top_tokens_of_the_most_active_neuron_match_transformers() {
    let golden = read_json("smollm2-measures-golden.json");
    let p = smollm2();
    let want = golden["top_tokens"].as_array().unwrap();
    let layers: Vec<usize> = want
        .iter()
        .map(|t| t["layer"].as_u64().unwrap() as usize)
        .collect();
    let rows = last_token_activations(
        &p.model,
        &prompts(&golden),
        2,
        6,
        &layers,
        &Default::default(),
    );
    for ((z, &layer), w) in rows.into_iter().zip(&layers).zip(want) {
        let t = top_tokens(&p.model, layer, z, 10);
        assert_eq!(
            t.neuron as u64,
            w["neuron"].as_u64().unwrap(),
            "neuron of layer {layer}"
        );
        let ids: Vec<i64> = t.ids.iter().map(|&i| i as i64).collect();
        assert_eq!(ids, ints(&w["ids"]), "top token ids of layer {layer}");
        let want_logits = floats(&w["logits"]);
        for (g, &w) in t.logits.iter().zip(&want_logits) {
            assert!(close(*g, w as f64, 1e-4), "layer {layer}: logit {g} vs {w}");
        }
        let m = w["mean_activation"].as_f64().unwrap();
        assert!(
            close(t.mean_activation, m, 1e-4),
            "mean activation {} vs {m}",
            t.mean_activation
        );
    }
}

#[test]
fn evaluate_log_probs_of_real_pairs_match_transformers() {
    let golden = read_json("smollm2-measures-golden.json");
    let p = smollm2();
    let tok = p.tokenizer.as_ref().unwrap();
    let file = root().join("../shared/data/cognitive-reframing/reframing_dataset.csv");
    let loaded = load_pairs(&file, &Task::CognitiveReframing, false).unwrap();
    let want = golden["pairs"].as_array().unwrap();
    let config = TokenizeConfig {
        max_prompt_length: 128,
        max_length: 256,
        eos_id: 2,
        template: decpo_datasets::Template::Raw,
    };
    let (pairs, _) = tokenize_pairs(tok, &loaded.pairs[..want.len()], &config, |_| {}).unwrap();
    for (got, w) in pairs.iter().zip(want) {
        let ids = |v: &[u32]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
        assert_eq!(
            ids(&got.prompt_ids),
            ints(&w["prompt_ids"]),
            "{}",
            got.source
        );
        assert_eq!(
            ids(&got.chosen_ids),
            ints(&w["chosen_ids"]),
            "{}",
            got.source
        );
        assert_eq!(
            ids(&got.rejected_ids),
            ints(&w["rejected_ids"]),
            "{}",
            got.source
        );
    }
    let objective = ObjectiveConfig {
        loss: LossType::Sigmoid,
        regularizer: Some(Regularizer::paper(30)),
        ..ObjectiveConfig::default()
    };
    // Without a reference the policy is its own: every reward is 0, every loss ln 2.
    let evals = evaluate_pairs(
        &p.model,
        None,
        &pairs,
        BatchIds { pad: 2, eos: 2 },
        &objective,
        16,
        &Default::default(),
    );
    for (e, w) in evals.iter().zip(want) {
        for (got, key) in [
            (e.logps_chosen, "logps_chosen"),
            (e.logps_rejected, "logps_rejected"),
            (e.ref_logps_chosen, "logps_chosen"),
            (e.ref_logps_rejected, "logps_rejected"),
            (e.mean_logps_chosen, "mean_logps_chosen"),
            (e.mean_logps_rejected, "mean_logps_rejected"),
        ] {
            let w = w[key].as_f64().unwrap();
            assert!(close(got, w, 1e-4), "{}: {key} {got} vs {w}", e.source);
        }
        assert_eq!(
            (e.rewards_chosen, e.rewards_rejected, e.margin),
            (0.0, 0.0, 0.0)
        );
        assert!(
            (e.loss - std::f64::consts::LN_2).abs() < 1e-6,
            "loss {}",
            e.loss
        );
        // Two rows, normalised: L = 2·cos²(z_w, z_l), in (0, 2].
        let reg = e.reg.expect("a regularizer is configured");
        assert!(reg > 0.0 && reg <= 2.0 + 1e-6, "regularizer {reg}");
    }
    let s = summarize(&evals);
    assert_eq!(
        (s.pairs, s.rewards_accuracies),
        (4, 0.0),
        "ties count as wrong"
    );
}

#[test]
fn measures_at_a_site_gather_rows_over_micro_batches() {
    // The embedded small Llama on held-out sort-digits pairs (repeated prompts among them).
    let device = Default::default();
    let model = sorting_config().init_seeded::<B>(3, &device);
    let (_, set) = sorting_pairs(0, 24);
    let layers = [0, 1, 2, 3];
    let at = |site, batch| site_measures(&model, &set, site, RegRows::All, &layers, batch, &device);
    // prompt-last over distinct prompts is the prompts' last-token measure (another code path:
    // prompts padded alone, rows read by `last_token_rows`).
    let prompts = set.prompts(usize::MAX);
    let direct = measure_layers(&model, &prompts, set.ids.pad, 16, &layers, &device);
    let prompt_last = at(Site::PromptLast, 5);
    for (a, b) in prompt_last.iter().zip(&direct) {
        assert_eq!(a.layer, b.layer);
        assert!(
            close(a.fd, b.fd, 1e-5) && close(a.av, b.av, 1e-5),
            "{a:?} vs {b:?}"
        );
    }
    // The measure is over all rows together: the micro-batch size does not change it.
    for site in [Site::CompletionMean, Site::CompletionLast, Site::Eos] {
        for (a, b) in at(site, 1).iter().zip(&at(site, 24)) {
            assert!(close(a.fd, b.fd, 1e-5), "{site:?}: {a:?} vs {b:?}");
            let s = (a.sparsity.unwrap(), b.sparsity.unwrap());
            assert!(
                close(s.0, s.1, 1e-5) && (0.0..=1.0).contains(&s.0),
                "{site:?} {s:?}"
            );
        }
    }
}
