//! `scripts/bench` rewrites docs/PERFORMANCE.md from its raw results. The analyses and figures
//! measured by hand live in blocks marked `<!-- kept: … -->` … `<!-- /kept -->`; a re-run must put
//! every one of them back, byte for byte, and a second render must change nothing. Runs the real
//! renderer (python3) on an empty results directory (every figure "not measured in this run")
//! over a copy of the document.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed step should fail the test loudly"
)]

use std::path::Path;
use std::process::Command;

fn kept_blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- kept:") {
        let end = rest[start..]
            .find("<!-- /kept -->")
            .expect("every kept block is closed");
        let stop = start + end + "<!-- /kept -->".len();
        out.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    out
}

fn render(results: &Path, doc: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("python3")
        .arg(root.join("scripts/bench_render.py"))
        .arg(results)
        .arg(doc)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "bench_render.py failed: {status}");
}

#[test]
fn a_bench_run_keeps_every_hand_written_block_of_the_performance_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let original = std::fs::read_to_string(root.join("docs/PERFORMANCE.md")).unwrap();
    let before = kept_blocks(&original);
    assert_eq!(before.len(), 4, "docs/PERFORMANCE.md has four kept blocks");

    let dir = std::env::temp_dir().join(format!("sitegate-bench-render-{}", std::process::id()));
    let results = dir.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let doc = dir.join("PERFORMANCE.md");
    std::fs::write(&doc, &original).unwrap();

    render(&results, &doc);
    let once = std::fs::read_to_string(&doc).unwrap();
    assert_eq!(kept_blocks(&once), before);
    // The renderer's own sections are there, with the figures of this (empty) run.
    assert!(once.lines().any(|l| l == "## Re-running"));
    assert!(once.contains("not measured in this run"));

    render(&results, &doc);
    let twice = std::fs::read_to_string(&doc).unwrap();
    assert_eq!(twice, once, "a second render changes nothing");
    std::fs::remove_dir_all(&dir).unwrap();
}
