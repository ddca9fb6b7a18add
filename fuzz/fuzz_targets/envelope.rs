//! The envelope wrapper and the three verifying constructors on unverified bytes: any input is
//! refused with a reason (or, for a correctly signed one, accepted), never a panic. The fixed
//! trusted key is the worked example's key of docs/grants.md, so its seed envelopes verify and the
//! fuzzer mutates from a valid starting point. One input in eight also goes through
//! `GrantEngine::apply` on a temporary store, as an MQTT `…/grants` message does (the kind peek,
//! the duplicate check, the audited rejection).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sitegate::audit::Audit;
use sitegate::clock::{ManualClock, SharedClock};
use sitegate::config::{Grants, TrustKey};
use sitegate::grants::GrantEngine;
use sitegate::model::SiteId;
use sitegate::store::Store;

use libfuzzer_sys::fuzz_target;
use sitegate::grants::bundle::{VerifiedBundle, VerifiedToken};
use sitegate::grants::{KeyError, VerifiedKeys, fleet};

fn example_key(kid: &str) -> Result<sitegate::grants::PublicKey, KeyError> {
    static KEYS: std::sync::OnceLock<[sitegate::grants::PublicKey; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let a: [u8; 32] = std::array::from_fn(|i| i as u8);
        let b: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
        let pk = |s: &[u8; 32]| {
            fleet::public_key(&fleet::keypair_from_seed(s).expect("seed")).expect("key")
        };
        [pk(&a), pk(&b)]
    });
    match kid {
        "fleet-example" => Ok(keys[0]),
        "fleet-example-2" => Ok(keys[1]),
        "retired" => Err(KeyError::Retired),
        _ => Err(KeyError::Unknown),
    }
}

fn engine() -> &'static (GrantEngine, tempfile::TempDir) {
    static E: OnceLock<(GrantEngine, tempfile::TempDir)> = OnceLock::new();
    E.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_in(dir.path()).expect("store");
        let clock: SharedClock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-11-23 20:00 UTC),
        ));
        let audit = Audit::new(store.clone(), clock.clone(), None);
        let cfg = Grants {
            trust: vec![TrustKey {
                kid: "fleet-example".into(),
                public_key: example_key("fleet-example").expect("key"),
            }],
            future_skew: Duration::from_secs(60),
            clock_rollback_alarm: Duration::from_secs(3600),
        };
        let site = SiteId::new("s-1").expect("site");
        let engine = GrantEngine::open(store, audit, clock, site, &cfg).expect("engine");
        (engine, dir)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() % 8 == 0 {
        let _ = engine().0.apply(None, data, "mqtt");
    }
    let _ = VerifiedBundle::verify(data, &example_key);
    let _ = VerifiedToken::verify(data, &example_key);
    let _ = VerifiedKeys::verify(data, &example_key);
});
