//! The GPU window's script, dry: `scripts/gpu/dry-run.sh` runs `scripts/gpu/run.sh` with a
//! stand-in card, CUDA folder, Vulkan ICD and bundle, and checks its mechanics (the deadline, a
//! hanging step cut, at most 8 plain files back, the packing, PyTorch first in the benchmark, a
//! missing bundle), then `scripts/gpu/check-bundle.sh` on real executables. It exits 1 naming
//! the first check that failed.

use std::process::Command;

#[test]
fn the_gpu_run_script_keeps_its_deadline_and_packs_what_comes_back() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/gpu/dry-run.sh"))
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("dry run passed"), "{text}");
}
