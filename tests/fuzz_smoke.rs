//! The fuzz targets (`decpo::fuzzing`) on stable Rust: each runs over its seed corpus (small
//! slices of the real files) and then over mutations of it (bit flips, truncations, interesting
//! integers, repeated and spliced chunks) for `DECPO_FUZZ_SECONDS` (default 2) seconds, and no
//! input may panic. A failing input is saved and named. The long runs are cargo-fuzz's
//! (`scripts/fuzz.sh`), which reads the seeds this test writes to `DECPO_FUZZ_CORPUS/<target>/`
//! when that is set.

mod common;

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use common::gguf::tiny_as_gguf;
use common::*;
use decpo::fuzzing::{FILE_SEPARATOR, TARGETS};
use decpo_datasets::read::panic_message;
use decpo_model::LlamaConfig;

fn shared(path: &str) -> Vec<u8> {
    let p = root().join("../shared/data").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first `n` lines of `text`.
fn lines(text: &[u8], n: usize) -> Vec<u8> {
    text.split_inclusive(|&b| b == b'\n')
        .take(n)
        .flatten()
        .copied()
        .collect()
}

fn joined(files: &[&[u8]]) -> Vec<u8> {
    files.join(FILE_SEPARATOR)
}

const CONVERSATIONAL: &str = concat!(
    r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "Go away."}]}"#,
    "\n",
    r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}"#,
    "\n"
);

/// Small slices of the real files each target reads.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let tiny = fixture("tiny-llama");
    let config = LlamaConfig::from_hf_file(&tiny.join("config.json")).unwrap();
    match target {
        "gguf" => vec![tiny_as_gguf(&config, None)],
        "hf_dir" => {
            let c = std::fs::read(tiny.join("config.json")).unwrap();
            let w = std::fs::read(tiny.join("model.safetensors")).unwrap();
            let t = decpo_datasets::default_job::TOKENIZER.as_bytes();
            vec![joined(&[&c, &w, t]), joined(&[&c, &w])]
        }
        "rows_jsonl" => {
            let mut hh = Vec::new();
            flate2::read::GzDecoder::new(&shared("hh-rlhf/harmless-base-test.jsonl.gz")[..])
                .read_to_end(&mut hh)
                .unwrap();
            vec![
                lines(&hh, 3),
                lines(
                    &shared(
                        "sycophancy-anthropic/political_typology_quiz_liberal-bio_conservative.jsonl",
                    ),
                    3,
                ),
                lines(decpo_datasets::default_job::PAIRS.as_bytes(), 4),
                CONVERSATIONAL.as_bytes().to_vec(),
            ]
        }
        "rows_json" => {
            let caa: Vec<serde_json::Value> =
                serde_json::from_slice(&shared("sycophancy-caa/test_dataset_ab.json")).unwrap();
            vec![serde_json::to_vec_pretty(&caa[..3]).unwrap()]
        }
        "rows_csv" => vec![lines(
            &shared("cognitive-reframing/reframing_dataset.csv"),
            5,
        )],
        "rows_parquet" => vec![std::fs::read(fixture("data/conversational.parquet")).unwrap()],
        "chat_template" => {
            let golden = read_json("smollm2-golden.json");
            let template = golden["chat"]["template"].as_str().unwrap();
            vec![joined(&[template.as_bytes(), CONVERSATIONAL.as_bytes()])]
        }
        "run_config" => {
            let embedded = toml::to_string(&decpo::run::embedded::config()).unwrap();
            let run = std::fs::read(
                root().join("reports/smollm2-reframing-seeds/runs/decpo-l10-r1-s1/config.toml"),
            )
            .unwrap();
            vec![embedded.into_bytes(), run]
        }
        other => panic!("no seeds for target {other}"),
    }
}

/// xorshift64*: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 8] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 62,
    u64::MAX,
];

/// `seed` with one to four mutations, `other` a second seed to splice from.
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len());
        match rng.below(7) {
            0 if !d.is_empty() => d[at] ^= 1 << rng.below(8),
            1 => d.truncate(at),
            2 if at + 8 <= d.len() => {
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                d[at..at + width].copy_from_slice(&v[..width]);
            }
            3 => {
                let len = rng.below(64.min(d.len() - at) + 1);
                let chunk = d[at..at + len].to_vec();
                d.splice(
                    at..at,
                    chunk.iter().copied().cycle().take(len * (1 + rng.below(8))),
                );
            }
            4 => {
                let len = rng.below(64.min(d.len() - at) + 1);
                d.drain(at..at + len);
            }
            5 => d.insert(at.min(d.len()), rng.next() as u8),
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(256.min(other.len() - from) + 1);
                d.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => {}
        }
    }
    d
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    let seconds: f64 = std::env::var("DECPO_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let corpus = std::env::var_os("DECPO_FUZZ_CORPUS").map(std::path::PathBuf::from);
    let failures = tempfile::tempdir().unwrap().keep();
    // A panic's message is printed once, by this test, with the input that caused it.
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        if let Some(dir) = &corpus {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let start = Instant::now();
        let mut runs = 0usize;
        while runs < seeds.len() || start.elapsed() < Duration::from_secs_f64(seconds) {
            let input = match seeds.get(runs) {
                Some(s) => s.clone(),
                None => {
                    let (a, b) = (rng.below(seeds.len()), rng.below(seeds.len()));
                    mutate(&seeds[a], &seeds[b], &mut rng)
                }
            };
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
                let _ = std::panic::take_hook();
                let saved = failures.join(format!("{name}-crash"));
                std::fs::write(&saved, &input).unwrap();
                panic!(
                    "fuzz target {name} panicked on input {} ({} bytes) after {runs} runs: {}",
                    saved.display(),
                    input.len(),
                    panic_message(panic.as_ref())
                );
            }
            runs += 1;
        }
        report.push(format!("{name} {runs}"));
    }
    let _ = std::panic::take_hook();
    eprintln!("runs per target: {}", report.join(", "));
}
