//! One seed, one model, one run, on every backend: the embedded model's weights are drawn on the
//! host, so burn-ndarray, the test backend and the binaries' backend (`decpo::backend`: burn-flex
//! by default, wgpu under `--features wgpu`, which CI runs on Mesa's llvmpipe) start from the same
//! numbers, and a short default job ends within float noise of each other.

mod common;

use burn::tensor::backend::AutodiffBackend;
use common::*;
use decpo::run::config::SftPhase;
use decpo::run::embedded;
use decpo::run::job::{self, Launch, Summary};
use decpo_alignment::train::session::ReferenceMode;

type Host = burn::backend::NdArray<f32>;

#[test]
fn a_seed_gives_the_same_embedded_model_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let weights_of = |seed| {
        let (host, _) = embedded::model::<Host>(dir.path(), seed, &Default::default()).unwrap();
        let (test, _) = embedded::model::<B>(dir.path(), seed, &Default::default()).unwrap();
        let (flex, _) =
            embedded::model::<burn::backend::Flex>(dir.path(), seed, &Default::default()).unwrap();
        let w = weights(&host);
        assert_eq!(
            w,
            weights(&test),
            "seed {seed}: the test backend's weights differ"
        );
        assert_eq!(w, weights(&flex), "seed {seed}: burn-flex's weights differ");
        w
    };
    assert_ne!(weights_of(7), weights_of(8));
}

/// The embedded default job cut short: 5 SFT steps, 5 preference steps.
fn short_job<AB: AutodiffBackend>(dir: &std::path::Path) -> Summary {
    let mut c = embedded::config();
    c.out = dir.to_path_buf();
    c.sft = Some(SftPhase {
        steps: 5,
        learning_rate: 3e-3,
    });
    c.train.max_steps = Some(5);
    c.train.save_every = 5;
    // A frozen reference runs on each step's batch only (the precomputed one would first pass
    // over all 600 pairs, which llvmpipe makes slow); training is the same (tested elsewhere).
    c.train.reference = ReferenceMode::Frozen;
    let device = AB::Device::default();
    let loaded = job::load::<AB>(&mut c, &device).unwrap();
    let data = job::data(&c, &loaded.tok, &loaded.name).unwrap();
    let launch = Launch {
        resume: false,
        dashboard: false,
        devices: std::slice::from_ref(&device),
    };
    job::run::<AB>(&c, loaded, data, &launch).unwrap().summary
}

#[test]
fn a_short_default_job_ends_alike_on_every_backend() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = short_job::<burn::backend::Autodiff<Host>>(a.path());
    let binaries = short_job::<decpo::backend::Autodiff>(b.path());
    let pairs = |s: &Summary| {
        [
            ("eval_before loss", s.eval_before.loss),
            ("eval_before logps/chosen", s.eval_before.logps_chosen),
            ("eval_after loss", s.eval_after.loss),
            ("eval_after rewards/margins", s.eval_after.rewards_margins),
            ("eval_after logps/chosen", s.eval_after.logps_chosen),
            ("eval_after logps/rejected", s.eval_after.logps_rejected),
        ]
    };
    // Float order differs between backends (kernels, reductions) and ten optimizer steps carry
    // that noise into the weights; measured on llvmpipe: 1e-7 relative at most. The bound is
    // 1e-5 relative (of at least 0.1).
    for ((name, x), (_, y)) in pairs(&host).into_iter().zip(pairs(&binaries)) {
        eprintln!("{name}: ndarray {x}, {} {y}", decpo::backend::name());
        let tol = 1e-5 * x.abs().max(0.1);
        assert!(
            (x - y).abs() <= tol,
            "{name}: ndarray {x}, {} {y} (tolerance {tol})",
            decpo::backend::name()
        );
    }
    assert_eq!(
        host.eval_after.rewards_accuracies, binaries.eval_after.rewards_accuracies,
        "held-out reward accuracy"
    );
}
