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
