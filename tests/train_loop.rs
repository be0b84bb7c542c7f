//! The training loop on the embedded sort-digits data and small Llama: determinism, resume,
//! NaN stop, checkpoints, and that DecPO learns the preference on held-out pairs.

mod common;

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use common::{AD, B, bits, short_run, sorting_config, sorting_pairs, weights};
use decpo_alignment::train::checkpoint::latest_checkpoint;
use decpo_alignment::train::schedule::Decay;
use decpo_alignment::train::session::{ReferenceMode, RunSpec, TrainSettings, train};
use decpo_alignment::{LossType, ObjectiveConfig, Regularizer, Site};
use decpo_model::{Llama, LoraConfig};

/// burn-ndarray's RNG (weight init, LoRA init, dropout) is one per process: tests that train
/// must not interleave, or they would draw from each other's stream.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn model(seed: u64) -> Llama<AD> {
    let device = Default::default();
    AD::seed(&device, seed);
    sorting_config().init(&device)
}

fn settings() -> TrainSettings {
    short_run()
}

fn objective() -> ObjectiveConfig {
    ObjectiveConfig {
        regularizer: Some(Regularizer::paper(4)),
        ..ObjectiveConfig::default()
    }
}

/// LoRA with dropout exercises the per-step RNG.
fn lora() -> LoraConfig {
    LoraConfig::new().with_dropout(0.1)
}

fn run(
    dir: &Path,
    resume: bool,
    s: &TrainSettings,
    lora: Option<&LoraConfig>,
) -> Result<Llama<B>, String> {
    run_on(dir, resume, s, lora, 1)
}

/// As [`run`], data parallel over `workers` workers on the CPU.
fn run_on(
    dir: &Path,
    resume: bool,
    s: &TrainSettings,
    lora: Option<&LoraConfig>,
    workers: usize,
) -> Result<Llama<B>, String> {
    let (train_set, eval_set) = sorting_pairs(48, 8);
    let objective = objective();
    train(
        model(3),
        train_set,
        eval_set,
        &RunSpec {
            objective: &objective,
            train: s,
            lora,
            dir,
            resume,
            dashboard: false,
            model_key: "test",
            nodes: None,
        },
        &vec![Default::default(); workers],
    )
    .map(|r| r.policy)
    .map_err(|e| e.to_string())
}

#[test]
fn two_cpu_runs_give_bit_identical_weights() {
    let _serial = serial();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = settings();
    let ma = run(a.path(), false, &s, Some(&lora())).unwrap();
    let mb = run(b.path(), false, &s, Some(&lora())).unwrap();
    assert_eq!(bits(&weights(&ma)), bits(&weights(&mb)));
    // And training changed the model: merged weights differ from the initial ones.
    let init = weights(&model(3).valid());
    assert_ne!(bits(&weights(&ma.merge_lora())), bits(&init));
}

#[test]
fn resume_equals_uninterrupted() {
    let _serial = serial();
    for lora in [Some(lora()), None] {
        let s = settings();
        let full = tempfile::tempdir().unwrap();
        let uninterrupted = weights(&run(full.path(), false, &s, lora.as_ref()).unwrap());

        // A run that crashed after its second checkpoint (step 4): drop the third interval's files.
        let crashed = tempfile::tempdir().unwrap();
        run(crashed.path(), false, &s, lora.as_ref()).unwrap();
        let ck = crashed.path().join("checkpoint");
        for part in ["model", "optim", "scheduler"] {
            std::fs::remove_file(ck.join(format!("{part}-3.mpk"))).unwrap();
        }
        assert_eq!(latest_checkpoint(crashed.path()), Some(2));
        let resumed = weights(&run(crashed.path(), true, &s, lora.as_ref()).unwrap());
        assert_eq!(
            bits(&resumed),
            bits(&uninterrupted),
            "resumed run differs (lora: {})",
            lora.is_some()
        );
        // The resumed run trained steps 5 and 6 only.
        let log = std::fs::read_to_string(crashed.path().join("log.jsonl")).unwrap();
        let train_steps: Vec<u64> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["split"] == "train")
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        assert_eq!(train_steps, vec![1, 2, 3, 4, 5, 6, 5, 6]);
    }
}

/// The `train` lines of a run's log.jsonl.
fn train_log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .collect()
}

#[test]
fn data_parallel_workers_train_the_one_worker_model() {
    let _serial = serial();
    // Full fine-tuning: no dropout, so the workers draw nothing from the one CPU RNG they share.
    for (accumulation, workers) in [(2, 2), (1, 2), (3, 2), (4, 3)] {
        let s = TrainSettings {
            accumulation,
            ..settings()
        };
        let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let expected = weights(&run_on(one.path(), false, &s, None, 1).unwrap());
        let got = weights(&run_on(many.path(), false, &s, None, workers).unwrap());
        let case = format!("accumulation {accumulation}, {workers} workers");
        if workers == 2 && accumulation <= 2 {
            // Each worker has at most one micro-batch: the same sums, in the same order (a
            // worker without one adds nothing).
            assert_eq!(bits(&got), bits(&expected), "{case}");
        } else {
            // Other sums of the same gradients: equal up to rounding.
            for (g, e) in got.iter().zip(&expected) {
                let scale = e.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                let err = g.iter().zip(e).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err < 1e-4 * scale, "{case}: max |Δw| {err} of {scale}");
            }
        }
        // Every step saw all its pairs and logs the whole step's values.
        let (a, b) = (train_log(one.path()), train_log(many.path()));
        assert_eq!(a.len(), b.len(), "{case}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["pairs"], y["pairs"], "{case}");
            assert_eq!(x["tokens"], y["tokens"], "{case}");
            for key in ["loss", "fd", "rewards/margins", "grad_norm"] {
                let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
                assert!(
                    (p - q).abs() <= 1e-4 * p.abs().max(1.0),
                    "{case} {key}: {p} vs {q}"
                );
            }
        }
    }
}

#[test]
fn checkpoints_keep_the_last_two_and_leave_no_partial_files() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = TrainSettings {
        save_every: 1,
        ..settings()
    };
    run(dir.path(), false, &s, None).unwrap();
    let ck = dir.path().join("checkpoint");
    let mut models: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("model-"))
        .collect();
    models.sort();
    // The last two (5, 6) plus the best by eval loss if it is older.
    assert!(models.contains(&"model-5.mpk".to_string()), "{models:?}");
    assert!(models.contains(&"model-6.mpk".to_string()), "{models:?}");
    assert!(models.len() <= 3, "{models:?}");
    let partial = ck.join(".partial");
    let leftovers = std::fs::read_dir(&partial).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "files left in {}", partial.display());
    assert_eq!(latest_checkpoint(dir.path()), Some(6));
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = TrainSettings {
        learning_rate: 1e30,
        warmup_steps: 0,
        decay: Decay::Constant,
        save_every: 1,
        max_grad_norm: None,
        ..settings()
    };
    let err = run(dir.path(), false, &s, None).unwrap_err();
    assert!(err.contains("not finite"), "{err}");
    let step: usize = err
        .strip_prefix("training stopped: step ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    assert!(step >= 2, "{err}");
    // The checkpoint of the last good step is complete and loads.
    let last = latest_checkpoint(dir.path()).expect("a checkpoint before the failure");
    assert_eq!(last, step - 1);
    let resumed = run(
        dir.path(),
        true,
        &TrainSettings {
            max_steps: Some(last),
            ..s
        },
        None,
    );
    assert!(resumed.is_ok(), "{:?}", resumed.err());
}

#[test]
fn decpo_learns_the_sorting_preference_on_held_out_pairs() {
    let _serial = serial();
    // SFT first so the reference is not random, then DecPO against it.
    let (train_set, eval_set) = sorting_pairs(540, 60);
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let sft = ObjectiveConfig {
        loss: LossType::Sft,
        ..ObjectiveConfig::default()
    };
    let s = TrainSettings {
        learning_rate: 3e-3,
        epochs: 10,
        max_steps: Some(60),
        micro_batch: 16,
        accumulation: 1,
        save_every: 60,
        seed: 1,
        ..TrainSettings::default()
    };
    fn spec<'a>(
        objective: &'a ObjectiveConfig,
        train: &'a TrainSettings,
        dir: &'a Path,
    ) -> RunSpec<'a> {
        RunSpec {
            objective,
            train,
            lora: None,
            dir,
            resume: false,
            dashboard: false,
            model_key: "learns",
            nodes: None,
        }
    }
    let (sft_dir, decpo_dir) = (dir.path().join("sft"), dir.path().join("decpo"));
    let sft_model = train(
        model(5),
        train_set.clone(),
        eval_set.clone(),
        &spec(&sft, &s, &sft_dir),
        std::slice::from_ref(&device),
    )
    .unwrap()
    .policy;
    let objective = objective();
    let s = TrainSettings {
        learning_rate: 1e-3,
        max_steps: Some(80),
        save_every: 40,
        ..s
    };
    let result = train(
        Llama::<AD>::from_inner(sft_model),
        train_set,
        eval_set,
        &spec(&objective, &s, &decpo_dir),
        std::slice::from_ref(&device),
    )
    .unwrap();
    let last = &result.report.evals.last().unwrap().values;
    assert_eq!(last.pairs, 60);
    assert!(
        last.rewards_accuracies > 0.8,
        "held-out reward accuracy {}",
        last.rewards_accuracies
    );
    assert!(
        last.rewards_margins > 0.3,
        "margin {}",
        last.rewards_margins
    );
    let first = &result.report.evals[0].values;
    assert!(last.rewards_margins > first.rewards_margins);
}

#[test]
fn lora_off_and_frozen_references_give_the_precomputed_run() {
    let _serial = serial();
    // The three reference modes are the same numbers: a LoRA run's weights agree.
    let mut out = Vec::new();
    for mode in [
        ReferenceMode::Precomputed,
        ReferenceMode::Frozen,
        ReferenceMode::LoraOff,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = TrainSettings {
            reference: mode,
            max_steps: Some(3),
            ..settings()
        };
        out.push(weights(&run(dir.path(), false, &s, Some(&lora())).unwrap()));
    }
    for (i, w) in out.iter().enumerate().skip(1) {
        let max_diff = w
            .iter()
            .flatten()
            .zip(out[0].iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-5, "mode {i}: max |Δw| = {max_diff}");
    }
}

#[test]
fn lambda_by_gradient_ratio_gives_that_ratio_on_the_step_it_was_set() {
    let _serial = serial();
    // With the reference computed on the fly, the calibration is the first to read the fresh
    // adapters: their values (and the step's dropout masks) must not depend on that.
    for mode in [ReferenceMode::Precomputed, ReferenceMode::LoraOff] {
        lambda_ratio_holds_on_step_one(mode);
    }
}

fn lambda_ratio_holds_on_step_one(reference: ReferenceMode) {
    let dir = tempfile::tempdir().unwrap();
    let objective = ObjectiveConfig {
        regularizer: Some(Regularizer {
            lambda_ratio: Some(0.3),
            site: Site::CompletionMean,
            ..Regularizer::paper(4)
        }),
        ..ObjectiveConfig::default()
    };
    let s = TrainSettings {
        reference,
        ..settings()
    };
    let lora = lora();
    let go = |resume: bool| {
        let (train_set, eval_set) = sorting_pairs(48, 8);
        let spec = RunSpec {
            objective: &objective,
            train: &s,
            lora: Some(&lora),
            dir: dir.path(),
            resume,
            dashboard: false,
            model_key: "test",
            nodes: None,
        };
        train(model(3), train_set, eval_set, &spec, &[Default::default()]).unwrap()
    };
    let cal = go(false).calibration.expect("λ was set by the ratio");
    assert_eq!(cal.ratio, 0.3);
    assert!((cal.lambda * cal.grad_norm_reg / cal.grad_norm_pref - 0.3).abs() < 1e-12);

    // Step 1 splits its gradient another way: the total gradient minus λ times the gradient of a
    // forward that stops at the regularized layer (with the same dropout masks). Its preference
    // part is the calibration's, and the asked ratio comes back.
    let log = train_log(dir.path());
    let first = &log[0];
    let value =
        |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    let pref = value(first, "grad_norm/pref");
    assert!(
        (pref / cal.grad_norm_pref - 1.0).abs() < 1e-4,
        "{reference:?}: {pref} vs {}",
        cal.grad_norm_pref
    );
    let ratio = value(first, "grad_norm/ratio");
    assert!(
        (ratio - 0.3).abs() < 1e-4,
        "{reference:?}: ratio {ratio} on the step λ was set"
    );
    assert!((value(first, "grad_norm/dec") / pref - ratio).abs() < 1e-12);
    // Every step logs the split; after the first the weights moved and so did the ratio.
    assert_eq!(log.len(), 6);
    assert!(log.iter().all(|v| v["grad_norm/ratio"].is_f64()));
    assert_ne!(value(&log[5], "grad_norm/ratio"), ratio);

    // A resumed run takes λ from the log instead of setting it again.
    let resumed = go(true);
    assert!(resumed.resumed_from.is_some());
    assert_eq!(resumed.calibration, Some(cal));
}
