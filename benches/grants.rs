//! Verify + apply of a 10,000-grant bundle (1,000 users), and verify alone. Before the timing
//! runs, one apply is measured for peak resident memory (VmHWM, reset through
//! /proc/self/clear_refs on Linux).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group};
use serde_json::json;
use sitegate::audit::Audit;
use sitegate::clock::{ManualClock, SharedClock, rfc3339};
use sitegate::grants::{GrantEngine, KeyError, Kind, VerifiedBundle, fleet};
use sitegate::model::SiteId;
use sitegate::store::Store;
use time::macros::datetime;

const GRANTS: usize = 10_000;
const USERS: usize = 1_000;

fn key() -> ring::signature::Ed25519KeyPair {
    fleet::keypair_from_seed(&[1; 32]).unwrap()
}

fn envelope(seq: u64) -> Vec<u8> {
    let issued = datetime!(2026-11-23 20:00 UTC) + time::Duration::seconds(seq as i64);
    let verifier =
        sitegate::grants::password::hash_password_with_salt(b"pw", 600_000, &[7; 16]).unwrap();
    let users: Vec<_> = (0..USERS)
        .map(|i| {
            json!({"id": format!("u-{i}"), "email": format!("user{i}@example.com"),
                   "name": format!("User {i}"), "active": true, "password": verifier})
        })
        .collect();
    let grants: Vec<_> = (0..GRANTS)
        .map(|i| {
            let scope = match i % 3 {
                0 => json!({"site": "s-1"}),
                1 => json!({"group": format!("floor-{}", i % 17)}),
                _ => json!({"unit": format!("hvac-{}", i % 250)}),
            };
            json!({"id": format!("g-{i}"), "user": format!("u-{}", i % USERS), "role": "control-only",
                   "scope": scope, "not_before": "2026-01-01T00:00:00Z", "expires_at": "2027-12-31T00:00:00Z"})
        })
        .collect();
    let revoked: Vec<_> = (0..500).map(|i| format!("r-{i}")).collect();
    let b = json!({"site": "s-1", "seq": seq, "issued_at": rfc3339(issued),
        "policy": {"management": "pro", "features": ["view", "control"], "max_offline": {"technician": "30d"}},
        "users": users, "grants": grants, "revoked": revoked});
    fleet::sign(
        Kind::Bundle,
        "fleet-a",
        &key(),
        &serde_json::to_vec(&b).unwrap(),
    )
}

fn engine(dir: &std::path::Path) -> GrantEngine {
    let store = Store::open_in(dir).unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(datetime!(2026-11-24 00:00 UTC)));
    let audit = Audit::new(store.clone(), clock.clone(), None);
    let cfg = sitegate::config::Grants {
        trust: vec![sitegate::config::TrustKey {
            kid: "fleet-a".into(),
            public_key: fleet::public_key(&key()).unwrap(),
        }],
        future_skew: Duration::from_secs(60),
        clock_rollback_alarm: Duration::from_secs(3600),
    };
    GrantEngine::open(store, audit, clock, SiteId::new("s-1").unwrap(), &cfg).unwrap()
}

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Child process: apply the envelope in `path` on a fresh engine and print the memory figures.
/// Running in its own process keeps the bundle's generation out of the numbers.
fn memory_child(path: &str) {
    let env = std::fs::read(path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(dir.path());
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let base = status_kb("VmRSS:").unwrap_or(0);
    eng.apply(None, &env, "bench").unwrap();
    let peak = status_kb("VmHWM:").unwrap_or(0);
    let after = status_kb("VmRSS:").unwrap_or(0);
    println!(
        "grants memory: envelope {} KiB; RSS before verify+apply {base} KiB, peak {peak} KiB \
         (+{} KiB{}), RSS after {after} KiB",
        env.len() / 1024,
        peak.saturating_sub(base),
        if reset {
            ""
        } else {
            "; VmHWM could not be reset"
        }
    );
}

fn memory_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.env");
    std::fs::write(&path, envelope(1)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--grants-memory-child")
        .arg(&path)
        .output()
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("grants");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let env = envelope(1);
    let pk = fleet::public_key(&key()).unwrap();
    let provider = move |kid: &str| {
        if kid == "fleet-a" {
            Ok(pk)
        } else {
            Err(KeyError::Unknown)
        }
    };
    g.bench_function("verify_10k_grants", |b| {
        b.iter(|| VerifiedBundle::verify(&env, &provider).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(dir.path());
    let mut seq = 0u64;
    g.bench_function("verify_and_apply_10k_grants", |b| {
        b.iter_batched(
            || {
                seq += 1;
                envelope(seq)
            },
            |env| eng.apply(None, &env, "bench").unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(grants_benches, benches);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--grants-memory-child") {
        memory_child(&args[i + 1]);
        return;
    }
    memory_report();
    grants_benches();
    Criterion::default().configure_from_args().final_summary();
}
