//! Durability: a row whose COMMIT returned survives kill -9 of the process that wrote it.
//!
//! The test re-runs its own binary as a child (`STORE_CHILD_DIR` set) that commits rows through
//! the real `Store` and prints each committed id; the parent kills it with SIGKILL mid-stream and
//! checks that every id the child reported is in the database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sitegate::audit::{Audit, Event};
use sitegate::clock::SystemClock;
use sitegate::store::Store;

#[test]
fn committed_rows_survive_kill_9() {
    if let Ok(dir) = std::env::var("STORE_CHILD_DIR") {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Create the schema before the child starts so both agree on it.
    drop(Store::open_in(dir.path()).unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "committed_rows_survive_kill_9", "--nocapture"])
        .env("STORE_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reported = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("committed ") {
            reported.push(seq.parse::<i64>().unwrap());
            if reported.len() == 200 {
                // Kill while the child is in the middle of its next writes.
                child.kill().unwrap();
                break;
            }
        }
        assert!(Instant::now() < deadline, "child too slow");
    }
    child.wait().unwrap();
    assert_eq!(reported.len(), 200);

    let store = Store::open_in(dir.path()).unwrap();
    store
        .with_conn(|c| {
            for seq in &reported {
                let n: i64 =
                    c.query_row("SELECT COUNT(*) FROM audit WHERE seq = ?1", [seq], |r| {
                        r.get(0)
                    })?;
                assert_eq!(n, 1, "committed audit row {seq} was lost");
            }
            // The chain is intact after the crash: nothing half-written.
            let chain = sitegate::audit::verify_chain(c)?;
            assert!(chain.is_ok(), "chain broken at {chain:?}");
            Ok(())
        })
        .unwrap();
}

fn child(dir: &str) {
    let store = Store::open_in(std::path::Path::new(dir)).unwrap();
    let audit = Audit::new(
        store,
        std::sync::Arc::new(SystemClock),
        Some("t/events".into()),
    );
    for i in 0..100_000 {
        let rec = audit
            .record_blocking(&Event::new("test", "ok").detail(serde_json::json!({ "i": i })))
            .unwrap();
        println!("committed {}", rec.seq);
    }
}
