//! The preference-data path on every real file in ../shared/data, against an independent
//! TRL-style Python implementation of the same procedure (scripts/make_data_fixture.py), with the
//! SmolLM2 tokenizer.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;
use decpo_datasets::{
    BatchIds, LengthStats, PreferenceBatch, SplitRule, Task, Template, TokenizeConfig,
    TokenizedPair, Turns, load_pairs, split, tokenize_pairs,
};
use decpo_model::weights::gguf::GgufFile;
use decpo_model::{ChatMessage, LlamaTokenizer};
use serde_json::Value;

fn shared_data() -> PathBuf {
    root().join("../shared/data")
}

fn tokenizer() -> &'static LlamaTokenizer {
    static TOK: OnceLock<LlamaTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        LlamaTokenizer::from_gguf(&GgufFile::open(&smollm2_path()).unwrap()).unwrap()
    })
}

fn config() -> TokenizeConfig {
    TokenizeConfig {
        max_prompt_length: 128,
        max_length: 256,
        eos_id: 2,
        template: decpo_datasets::Template::Raw,
    }
}

fn task_of(entry: &Value) -> Task {
    match (entry["task"].as_str().unwrap(), entry["mode"].as_str()) {
        ("sycophancy-caa", Some("full-text")) => Task::SycophancyCaa { full_text: true },
        (name, _) => Task::from_name(name).unwrap(),
    }
}

fn text(t: &Turns) -> &str {
    match t {
        Turns::Text(s) => s,
        Turns::Chat(_) => panic!("expected text"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    ints(v).into_iter().map(|i| i as u32).collect()
}

#[test]
fn every_real_file_matches_the_python_reference() {
    let golden = read_json("data-golden.json");
    let mut files = 0;
    for entry in golden["files"].as_array().unwrap() {
        let path = shared_data().join(entry["file"].as_str().unwrap());
        let what = format!("{} {:?}", entry["file"], entry["mode"]);
        let loaded = load_pairs(&path, &task_of(entry), true).unwrap();
        assert_eq!(
            loaded.rows as u64,
            entry["rows"].as_u64().unwrap(),
            "{what}: rows"
        );
        assert_eq!(
            loaded.pairs.len() as u64,
            entry["pairs"].as_u64().unwrap(),
            "{what}: pairs"
        );
        let invalid: serde_json::Map<String, Value> = loaded
            .invalid
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        assert_eq!(
            Value::Object(invalid),
            entry["invalid"],
            "{what}: invalid rows"
        );

        let (tokenized, report) =
            tokenize_pairs(tokenizer(), &loaded.pairs, &config(), |_| {}).unwrap();
        assert_eq!(
            tokenized.len() as u64,
            entry["kept"].as_u64().unwrap(),
            "{what}: kept"
        );
        let dropped: serde_json::Map<String, Value> = report
            .dropped
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        assert_eq!(Value::Object(dropped), entry["dropped"], "{what}: dropped");
        assert_eq!(
            report.prompt_not_token_prefix as u64,
            entry["prompt_not_token_prefix"].as_u64().unwrap(),
            "{what}: prompt not a token prefix"
        );
        assert_eq!(
            report.prompt_truncated as u64,
            entry["prompt_truncated"].as_u64().unwrap(),
            "{what}"
        );
        assert_eq!(
            report.completion_truncated as u64,
            entry["completion_truncated"].as_u64().unwrap(),
            "{what}"
        );

        let lengths = LengthStats::of(&tokenized).unwrap().prompt_plus_chosen;
        let got = [lengths.p50, lengths.p90, lengths.p99, lengths.max];
        for (key, got) in ["p50", "p90", "p99", "max"].into_iter().zip(got) {
            let want = entry["length_percentiles"][key].as_f64().unwrap();
            assert!((got - want).abs() < 1e-9, "{what}: {key} {got} vs {want}");
        }
        for example in entry["examples"].as_array().unwrap() {
            let place = format!(" {}", place_label(&what, &example["place"]));
            let t = tokenized
                .iter()
                .find(|t| t.source.ends_with(&place))
                .unwrap_or_else(|| panic!("{what}: no kept pair at{place}"));
            let pair = loaded
                .pairs
                .iter()
                .find(|p| p.source.ends_with(&place))
                .unwrap();
            assert_eq!(
                text(&pair.prompt),
                example["prompt"].as_str().unwrap(),
                "{what}{place}: prompt"
            );
            assert_eq!(
                text(&pair.chosen),
                example["chosen"].as_str().unwrap(),
                "{what}{place}: chosen"
            );
            assert_eq!(
                text(&pair.rejected),
                example["rejected"].as_str().unwrap(),
                "{what}{place}: rejected"
            );
            assert_eq!(
                t.prompt_ids,
                ids(&example["prompt_ids"]),
                "{what}{place}: prompt ids"
            );
            assert_eq!(
                t.chosen_ids,
                ids(&example["chosen_ids"]),
                "{what}{place}: chosen ids"
            );
            assert_eq!(
                t.rejected_ids,
                ids(&example["rejected_ids"]),
                "{what}{place}: rejected ids"
            );
        }
        files += 1;
    }
    assert_eq!(files, 8);
}

fn place_label(what: &str, place: &Value) -> String {
    let n = place.as_u64().unwrap();
    if what.contains(".jsonl") {
        format!("line {n}")
    } else if what.contains(".csv") {
        format!("record {n}")
    } else {
        format!("item {n}")
    }
}

#[test]
fn batch_and_split_match_the_python_reference() {
    let golden = read_json("data-golden.json");
    let path = shared_data().join("hh-rlhf/harmless-base-test.jsonl.gz");
    let loaded = load_pairs(&path, &Task::HhRlhf, true).unwrap();
    let (tokenized, _) = tokenize_pairs(tokenizer(), &loaded.pairs, &config(), |_| {}).unwrap();
    let first: Vec<&TokenizedPair> = tokenized.iter().take(3).collect();
    let batch = PreferenceBatch::new(&first, BatchIds { pad: 2, eos: 2 });
    let want = &golden["batch"];
    assert_eq!(batch.input_ids, ints(&want["input_ids"]));
    assert_eq!(batch.attention_mask, ints(&want["attention_mask"]));
    assert_eq!(batch.completion_mask, ints(&want["completion_mask"]));

    let n = tokenized.len();
    let (train, eval) = split(tokenized, SplitRule::default(), |p| p.prompt_ids.clone());
    let s = &golden["split"]["hh-rlhf"];
    assert_eq!(
        (n as u64, train.len() as u64, eval.len() as u64),
        (
            s["n"].as_u64().unwrap(),
            s["train"].as_u64().unwrap(),
            s["eval"].as_u64().unwrap()
        )
    );
}

#[test]
fn conversational_parquet_renders_with_the_chat_template() {
    let path = fixture("data/conversational.parquet");
    let loaded = load_pairs(&path, &Task::Trl(Default::default()), false).unwrap();
    assert_eq!(loaded.rows, 2);
    let pair = &loaded.pairs[0];
    assert_eq!(pair.source, "conversational.parquet row 0");
    let (prompt, chosen, rejected) = decpo_datasets::tokenize::render(tokenizer(), pair).unwrap();
    // SmolLM2's template adds its default system turn when the conversation has none.
    let system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    assert_eq!(
        prompt,
        format!("{system}<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    );
    // The completion ends at the template's end of turn, the EOS: no line break after it and no
    // second EOS (TRL appends one after the `\n`).
    assert_eq!(
        (chosen.as_str(), rejected.as_str()),
        ("4.<|im_end|>", "22.<|im_end|>")
    );
    let (tokenized, report) =
        tokenize_pairs(tokenizer(), &loaded.pairs, &config(), |_| {}).unwrap();
    assert_eq!(report.prompt_not_token_prefix, 0);
    let tok = tokenizer();
    assert_eq!(
        tok.decode(&tokenized[1].chosen_ids, false).unwrap(),
        "Blue.<|im_end|>"
    );
}

const SMOLLM2_SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn templates_lay_out_text_pairs_for_the_model() {
    let file = shared_data().join("cognitive-reframing/reframing_dataset.csv");
    let loaded = load_pairs(&file, &Task::CognitiveReframing, false).unwrap();
    let pairs = &loaded.pairs[..3];
    let tok = tokenizer();
    let decode = |ids: &[u32]| tok.decode(ids, false).unwrap();
    let (situation, reframe) = (text(&pairs[0].prompt), text(&pairs[0].chosen));
    assert_eq!(situation, "A Roomate of mine stole my comptuer");

    // chat: the situation is the user's turn, the reframe the assistant's, ending at one EOS.
    let chat = TokenizeConfig {
        template: Template::Chat,
        ..config()
    };
    let (t, report) = tokenize_pairs(tok, pairs, &chat, |_| {}).unwrap();
    assert_eq!(report.prompt_not_token_prefix, 0);
    assert_eq!(
        decode(&t[0].prompt_ids),
        format!("{SMOLLM2_SYSTEM}<|im_start|>user\n{situation}<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(decode(&t[0].chosen_ids), format!("{reframe}<|im_end|>"));
    // What a judge is shown is the situation itself, not the template's markup.
    assert_eq!(t[0].prompt_text, situation);
    for ids in [&t[0].chosen_ids, &t[0].rejected_ids] {
        let n = ids.len();
        assert_eq!(
            (ids[n - 1], ids[n - 2] == 2),
            (2, false),
            "one EOS at the end"
        );
    }

    // plain: a line break between situation and reframe; raw: run together as in the file.
    let plain = TokenizeConfig {
        template: Template::Plain,
        ..config()
    };
    let (t, _) = tokenize_pairs(tok, pairs, &plain, |_| {}).unwrap();
    let joined = format!("{}{}", decode(&t[0].prompt_ids), decode(&t[0].chosen_ids));
    assert_eq!(joined, format!("{situation}\n{reframe}<|im_end|>"));
    let (t, _) = tokenize_pairs(tok, pairs, &config(), |_| {}).unwrap();
    let joined = format!("{}{}", decode(&t[0].prompt_ids), decode(&t[0].chosen_ids));
    assert_eq!(joined, format!("{situation}{reframe}<|im_end|>"));
}

#[test]
fn the_by_prompt_split_holds_out_whole_situations() {
    let file = shared_data().join("cognitive-reframing/reframing_dataset.csv");
    let pairs = load_pairs(&file, &Task::CognitiveReframing, false)
        .unwrap()
        .pairs;
    let prompt = |p: &decpo_datasets::PreferencePair| text(&p.prompt).to_string();
    let shared = |(train, eval): (Vec<_>, Vec<_>)| {
        let seen: std::collections::HashSet<String> = train.iter().map(prompt).collect();
        eval.iter().filter(|p| seen.contains(&prompt(p))).count()
    };
    // A shuffled cut splits situations' reframes across both sides.
    let shuffled = SplitRule::Shuffled {
        eval_fraction: 0.1,
        seed: 42,
    };
    assert!(shared(split(pairs.clone(), shuffled, prompt)) > 0);
    let by_prompt = SplitRule::ByKey {
        eval_fraction: 0.1,
        seed: 42,
    };
    let (train, eval) = split(pairs.clone(), by_prompt, prompt);
    assert!(eval.len() >= pairs.len() / 10, "{} held out", eval.len());
    assert_eq!(train.len() + eval.len(), pairs.len());
    assert_eq!(shared((train, eval)), 0);
}

/// A chat template is code from a user's file: one that loops without end or writes without end
/// stops with an error naming the tokenizer, and a long real conversation still renders.
#[test]
fn a_chat_template_that_runs_or_writes_without_end_is_an_error() {
    let real = tokenizer();
    let long: Vec<ChatMessage> = (0..2000)
        .map(|i| ChatMessage::new(["user", "assistant"][i % 2], &format!("turn {i}")))
        .collect();
    let text = real.apply_chat_template(&long, true).unwrap();
    assert!(text.ends_with("turn 1999<|im_end|>\n<|im_start|>assistant\n"));

    let with = |template: &str| {
        let mut tok = real.clone();
        tok.chat_template = Some(template.into());
        tok.apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
            .unwrap_err()
            .to_string()
    };
    let endless =
        with("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
    assert!(
        endless.contains("did not finish within 1100000 steps"),
        "{endless}"
    );
    assert!(endless.contains(".gguf"), "{endless}");
    let huge = with("{% for i in range(100) %}{{ 'x' * 100000000 }}{% endfor %}");
    assert!(huge.contains("wrote more than 67108864 bytes"), "{huge}");
}
