//! The real model: SmolLM2-135M-Instruct from its GGUF (Q4_1 + Q8_0), against transformers on the
//! same dequantised weights (fixture: scripts/make_smollm2_fixture.py). Needs
//! scripts/fetch-models.sh; a missing file fails the test rather than skipping it.

mod common;

use std::sync::OnceLock;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use decpo_model::{
    ChatMessage, Pretrained, SamplingConfig, completion_logps, generate, load_pretrained,
    save_hf_dir,
};

fn smollm2() -> &'static Pretrained<B> {
    static MODEL: OnceLock<Pretrained<B>> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_pretrained::<B>(&smollm2_path(), &Default::default()).expect("SmolLM2 loads")
    })
}

fn ids_tensor(ids: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &Default::default(),
    )
}

#[test]
fn config_and_special_tokens_come_from_the_gguf() {
    let golden = read_json("smollm2-golden.json");
    let p = smollm2();
    let c = &p.model.config;
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 576, 1536, 9, 3)
    );
    assert_eq!(
        (c.vocab_size, c.rope_theta, c.tie_word_embeddings),
        (49_152, 100_000.0, true)
    );
    let tok = p.tokenizer.as_ref().unwrap();
    let special = &golden["special"];
    assert_eq!(tok.bos_token.as_deref(), special["bos_token"].as_str());
    assert_eq!(tok.eos_token.as_deref(), special["eos_token"].as_str());
    assert_eq!(tok.pad_token.as_deref(), special["pad_token"].as_str());
    assert!(!tok.add_bos_token);
}

#[test]
fn the_capital_of_france_is_paris() {
    let golden = read_json("smollm2-golden.json");
    let p = smollm2();
    let tok = p.tokenizer.as_ref().unwrap();
    let prompt = tok.encode("The capital of France is", true).unwrap();
    let want_prompt: Vec<u32> = ints(&golden["greedy"]["prompt_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    assert_eq!(prompt, want_prompt);
    let new = generate(
        &p.model,
        &prompt,
        8,
        &[],
        &SamplingConfig::default(),
        &Default::default(),
    );
    let want: Vec<u32> = ints(&golden["greedy"]["new_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    assert_eq!(new, want, "greedy continuation differs from transformers");
    let text = tok.decode(&new, true).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
    assert_eq!(text, golden["greedy"]["new_text"].as_str().unwrap());
}

#[test]
fn sentence_logprobs_and_activations_match_transformers() {
    let golden = read_json("smollm2-golden.json");
    let p = smollm2();
    let tok = p.tokenizer.as_ref().unwrap();
    let layers: Vec<usize> = ints(&golden["up_proj"]["layers"])
        .iter()
        .map(|&l| l as usize)
        .collect();
    for (s, sentence) in golden["sentences"].as_array().unwrap().iter().enumerate() {
        let text = sentence["text"].as_str().unwrap();
        let ids = ints(&sentence["input_ids"]);
        let ours: Vec<i64> = tok
            .encode(text, false)
            .unwrap()
            .iter()
            .map(|&i| i as i64)
            .collect();
        assert_eq!(ours, ids, "token ids of {text:?}");

        let x = ids_tensor(&ids);
        let ones = Tensor::<B, 2, Int>::ones([1, ids.len()], &Default::default());
        let out = p.model.forward(x.clone(), ones.clone(), &layers);
        let logps = completion_logps(&p.model, out.hidden, x, ones, 16);
        let per_token = to_vec(logps.per_token);
        assert_close_each(&per_token, &floats(&sentence["token_logps"]), 1e-4, text);
        assert_close_each(
            &to_vec(logps.sum),
            &[sentence["logp_sum"].as_f64().unwrap() as f32],
            1e-4,
            text,
        );

        if s < 3 {
            for (l, up) in out.up_proj.into_iter().enumerate() {
                let n = ids.len();
                let last = to_vec(up.narrow(1, n - 1, 1));
                let want = floats(&golden["up_proj"]["values"][l][s]);
                let e = rel_err(&last, &want);
                assert!(
                    e < 1e-4,
                    "up_proj of layer {} at the last token of {text:?}: {e}",
                    layers[l]
                );
            }
        }
    }
}

#[test]
fn tokenizer_from_gguf_metadata_splits_digits_and_keeps_specials() {
    let golden = read_json("smollm2-golden.json");
    let tok = smollm2().tokenizer.as_ref().unwrap();
    for case in golden["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = ints(&case["ids"]).iter().map(|&i| i as u32).collect();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn chat_template_renders_as_transformers_does() {
    let golden = read_json("smollm2-golden.json");
    let tok = smollm2().tokenizer.as_ref().unwrap();
    let chat = &golden["chat"];
    assert_eq!(tok.chat_template.as_deref(), chat["template"].as_str());
    let messages: Vec<ChatMessage> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let rendered = tok.apply_chat_template(&messages, true).unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
    let ids: Vec<i64> = tok
        .encode(&rendered, false)
        .unwrap()
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(ids, ints(&chat["rendered_ids"]));
}

#[test]
fn gguf_to_hf_directory_round_trip_gives_identical_logits() {
    let p = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    save_hf_dir(&p.model, p.tokenizer.as_ref(), &out).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(file).exists(), "{file} not written");
    }
    let back = load_pretrained::<B>(&out, &Default::default()).unwrap();
    assert_eq!(back.model.config, p.model.config);
    let ids = ids_tensor(&[504, 3575, 282, 4649, 314, 7042, 30]);
    let mask = Tensor::<B, 2, Int>::ones([1, 7], &Default::default());
    let a = p
        .model
        .logits(p.model.forward(ids.clone(), mask.clone(), &[]).hidden);
    let b = back.model.logits(back.model.forward(ids, mask, &[]).hidden);
    assert_eq!(to_vec(a), to_vec(b), "logits changed through the HF export");
    let tok = back.tokenizer.unwrap();
    let text = "Total:  99\n\n100 items <|im_end|>";
    assert_eq!(
        tok.encode(text, false).unwrap(),
        p.tokenizer.as_ref().unwrap().encode(text, false).unwrap()
    );
    assert_eq!(
        tok.chat_template,
        p.tokenizer.as_ref().unwrap().chat_template
    );
}

#[test]
fn pairwise_judging_cancels_the_order_the_responses_are_shown_in() {
    use decpo_alignment::judge::{Judge, JudgeQuestion};
    let p = smollm2();
    let tok = p.tokenizer.as_ref().unwrap();
    let judge = Judge::new(&p.model, tok, &Default::default()).unwrap();
    let q = JudgeQuestion::Reframing;
    let prompt = "A Roomate of mine stole my comptuer";
    let good = "My roommate stole something of mine, and I will focus on actionable solutions.";
    let bad = "Someone I trusted stole something valuable of mine, I wanted justice";
    let text = judge.render_pairwise(q, prompt, (good, bad), None);
    assert!(
        text.contains(&format!("Response A: {good}\nResponse B: {bad}\n"))
            && text.ends_with("Answer A or B.<|im_end|>\n<|im_start|>assistant\n"),
        "{text}"
    );
    let prefs = judge
        .preferences(
            q,
            &[
                (prompt, good, bad, None),
                (prompt, bad, good, None),
                (prompt, good, good, None),
            ],
        )
        .unwrap();
    // Swapping the responses swaps the two texts the judge reads: the preference flips.
    assert!(
        (prefs[0].p_first() + prefs[1].p_first() - 1.0).abs() < 1e-5,
        "{prefs:?}"
    );
    assert!((prefs[0].first_as_a + prefs[1].first_as_b - 1.0).abs() < 1e-5);
    // Two identical responses: whatever the judge's taste for a position, the mean is 0.5; and
    // it has one (the two orders of one text differ only in what is A and what is B).
    assert!((prefs[2].p_first() - 0.5).abs() < 1e-5, "{:?}", prefs[2]);
    assert!((prefs[2].first_as_a - 0.5).abs() > 1e-3, "{:?}", prefs[2]);
}
