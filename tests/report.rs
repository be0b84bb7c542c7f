//! The experiment's report is rendered from a template: rewritten from the committed report's
//! results.json, it is the committed report.md (first the one the hand-written renderer it
//! replaced wrote; since, as the template evolves, `experiment --report-only` rewrites it, so a
//! committed report never goes stale).

use std::path::Path;

#[test]
fn the_template_renders_the_committed_report_as_it_was_written() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/smollm2-reframing");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        committed.join("results.json"),
        dir.path().join("results.json"),
    )
    .unwrap();
    decpo::experiment::report::rewrite(dir.path()).unwrap();
    let want = std::fs::read_to_string(committed.join("report.md")).unwrap();
    let got = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert_eq!(got, want);
}

#[test]
fn the_report_gives_the_judge_check_with_its_pairwise_part_when_there_is_one() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/smollm2-reframing");
    let text = std::fs::read_to_string(committed.join("results.json")).unwrap();
    let mut saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    let check = serde_json::json!({
        "pairs": 30, "auc": 0.62, "mean_p_yes_chosen": 0.8, "mean_p_yes_rejected": 0.78,
    });
    let mut render = |check: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        saved["settings"]["judge_check"] = check;
        std::fs::write(dir.path().join("results.json"), saved.to_string()).unwrap();
        decpo::experiment::report::rewrite(dir.path()).unwrap();
        std::fs::read_to_string(dir.path().join("report.md")).unwrap()
    };
    // A check written before pairwise judging: AUC only.
    let old = render(check.clone());
    assert!(
        old.contains("AUC 0.62 ") && old.contains("**Below 0.75"),
        "{old}"
    );
    assert!(!old.contains("side by side"));
    let mut with_pairwise = check;
    with_pairwise["pairwise_accuracy"] = 0.7.into();
    with_pairwise["pairwise_consistency"] = 0.4.into();
    let new = render(with_pairwise);
    assert!(
        new.contains(
            "side by side, in both orders, it preferred the chosen on 70.0 % of the pairs (50 % \
             is chance), and both orders agreed on 40.0 %."
        ),
        "{new}"
    );
}
