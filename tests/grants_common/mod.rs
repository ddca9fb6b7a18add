//! Shared fixtures for the grants tests: deterministic keys, a store in a temp dir, a manual
//! clock, and bundle descriptions signed through the fleet library (never by hand).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test fixtures; each test binary uses a different subset"
)]

use std::sync::Arc;
use std::time::Duration;

use ring::signature::Ed25519KeyPair;
use serde_json::{Value, json};
use sitegate::audit::{self, Audit};
use sitegate::clock::{ManualClock, SharedClock};
use sitegate::config::{Grants, TrustKey};
use sitegate::grants::{GrantEngine, Kind, fleet};
use sitegate::model::SiteId;
use sitegate::store::Store;
use time::OffsetDateTime;
use time::macros::datetime;

pub const SITE: &str = "s-1";
pub const KID_A: &str = "fleet-a";
pub const KID_B: &str = "fleet-b";

/// Issue time of bundle seq 1; later bundles add an hour per seq.
pub const T0: OffsetDateTime = datetime!(2026-11-23 20:00 UTC);

/// Deterministic key from a one-byte seed.
pub fn key(n: u8) -> Ed25519KeyPair {
    fleet::keypair_from_seed(&[n; 32]).unwrap()
}

pub fn issued(seq: u64) -> OffsetDateTime {
    T0 + time::Duration::hours(seq as i64 - 1)
}

pub fn ts(t: OffsetDateTime) -> String {
    sitegate::clock::rfc3339(t)
}

/// Ana's password verifier: fixed salt and 1 iteration so that fixtures are deterministic and fast.
pub fn ana_verifier() -> String {
    sitegate::grants::password::hash_password_with_salt(b"pw-ana", 1, &[3; 16]).unwrap()
}

/// A bundle description with two users and three grants.
pub fn bundle(seq: u64) -> Value {
    json!({
        "site": SITE,
        "seq": seq,
        "issued_at": ts(issued(seq)),
        "policy": {
            "management": "pro",
            "features": ["view", "control", "diagnose", "configure", "manage_users"],
            "max_offline": {"technician": "30d", "admin": 2592000}
        },
        "users": [
            {"id": "u-1", "email": "ana@example.com", "name": "Ana", "active": true,
             "password": ana_verifier()},
            {"id": "u-2", "email": "ben@example.com", "name": "Ben", "active": true}
        ],
        "grants": [
            {"id": "g-1", "user": "u-1", "role": "technician", "scope": {"site": SITE},
             "expires_at": ts(T0 + time::Duration::days(365))},
            {"id": "g-2", "user": "u-2", "role": "viewer", "scope": {"unit": "hvac-1"}},
            {"id": "g-3", "user": "u-2", "role": "control-only", "scope": {"group": "floor-1"},
             "not_before": ts(T0), "expires_at": ts(T0 + time::Duration::days(30))}
        ],
        "revoked": ["g-0"]
    })
}

pub fn sign(kind: Kind, kid: &str, k: &Ed25519KeyPair, v: &Value) -> Vec<u8> {
    fleet::sign(kind, kid, k, &serde_json::to_vec(v).unwrap())
}

pub fn sign_bundle(v: &Value) -> Vec<u8> {
    sign(Kind::Bundle, KID_A, &key(1), v)
}

pub fn cfg() -> Grants {
    Grants {
        trust: vec![TrustKey {
            kid: KID_A.into(),
            public_key: fleet::public_key(&key(1)).unwrap(),
        }],
        future_skew: Duration::from_secs(60),
        clock_rollback_alarm: Duration::from_secs(3600),
    }
}

/// An engine on a fresh database, clock at T0.
pub struct Fx {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub clock: ManualClock,
    pub engine: GrantEngine,
    pub cfg: Grants,
}

impl Fx {
    pub fn new() -> Fx {
        Fx::with_cfg(cfg())
    }

    pub fn with_cfg(cfg: Grants) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let clock = ManualClock::new(T0);
        let engine = open_engine(&store, &clock, &cfg);
        Fx {
            dir,
            store,
            clock,
            engine,
            cfg,
        }
    }

    /// A second engine on the same database (as after a restart).
    pub fn reopen(&self) -> GrantEngine {
        open_engine(&self.store, &self.clock, &self.cfg)
    }

    pub fn apply(
        &self,
        bytes: &[u8],
    ) -> Result<sitegate::grants::ApplyOutcome, sitegate::grants::Rejection> {
        self.engine.apply(None, bytes, "test")
    }

    /// Applies bundle `seq` with the clock set to its issue time.
    pub fn apply_seq(&self, seq: u64) {
        self.clock.set(issued(seq));
        self.apply(&sign_bundle(&bundle(seq))).unwrap();
    }

    /// Newest audit records, newest first.
    pub fn audit(&self, limit: u32) -> Vec<audit::Record> {
        self.store
            .with_conn(|c| {
                audit::query(
                    c,
                    &audit::Query {
                        limit,
                        ..Default::default()
                    },
                )
            })
            .unwrap()
    }

    pub fn audit_of_kind(&self, kind: &str) -> Vec<audit::Record> {
        self.store
            .with_conn(|c| {
                audit::query(
                    c,
                    &audit::Query {
                        kind: Some(kind.into()),
                        limit: 1000,
                        ..Default::default()
                    },
                )
            })
            .unwrap()
    }
}

pub fn open_engine(store: &Store, clock: &ManualClock, cfg: &Grants) -> GrantEngine {
    let shared: SharedClock = Arc::new(clock.clone());
    let audit = Audit::new(
        store.clone(),
        shared.clone(),
        Some("sitegate/v1/s-1/gw-1/events".into()),
    );
    GrantEngine::open(
        store.clone(),
        audit,
        shared,
        SiteId::new(SITE).unwrap(),
        cfg,
    )
    .unwrap()
}

/// A key-set description.
pub fn keyset(seq: u64, keys: &[(&str, &Ed25519KeyPair)]) -> Value {
    json!({
        "seq": seq,
        "issued_at": ts(T0),
        "keys": keys.iter().map(|(kid, k)| json!({"kid": kid, "public_key": fleet::public_key_b64(k)})).collect::<Vec<_>>()
    })
}

pub fn sign_keyset(v: &Value, signers: &[(&str, &Ed25519KeyPair)]) -> Vec<u8> {
    fleet::sign_keys(signers, &serde_json::to_vec(v).unwrap())
}

/// A token description for user `u-9` / grant `g-t1`.
pub fn token(expires: OffsetDateTime) -> Value {
    json!({
        "site": SITE,
        "issued_at": ts(T0),
        "user": {"id": "u-9", "email": "installer@example.com", "name": "Ivo", "active": true},
        "grant": {"id": "g-t1", "user": "u-9", "role": "technician", "scope": {"site": SITE},
                  "expires_at": ts(expires)}
    })
}

/// Re-encodes an envelope after `f` edits its JSON (tampering in tests).
pub fn edit_envelope(env: &[u8], f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(env).unwrap();
    f(v.as_object_mut().unwrap());
    serde_json::to_vec(&v).unwrap()
}

pub fn b64(b: &[u8]) -> String {
    sitegate::util_b64::encode(b)
}

pub fn unb64(s: &str) -> Vec<u8> {
    sitegate::util_b64::decode(s).unwrap()
}
