//! Bundle payload parsing behind a valid signature: the input is the payload, signed with a
//! fixed-seed key, so every byte reaches the payload parser and validator. Payloads that validate
//! are also applied to a `GrantEngine` on a temporary store (the state swap, the revocation list,
//! the clock floor): any input gives an outcome or a rejection, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ring::signature::Ed25519KeyPair;
use sitegate::audit::Audit;
use sitegate::clock::{ManualClock, SharedClock};
use sitegate::config::{Grants, TrustKey};
use sitegate::grants::bundle::{VerifiedBundle, check_bundle_payload};
use sitegate::grants::{GrantEngine, KeyError, Kind, fleet};
use sitegate::model::SiteId;
use sitegate::store::Store;

struct Fx {
    key: Ed25519KeyPair,
    public: sitegate::grants::PublicKey,
    engine: GrantEngine,
    _dir: tempfile::TempDir,
}

fn fx() -> &'static Fx {
    static FX: OnceLock<Fx> = OnceLock::new();
    FX.get_or_init(|| {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = fleet::keypair_from_seed(&seed).expect("seed");
        let public = fleet::public_key(&key).expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_in(dir.path()).expect("store");
        let clock: SharedClock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-11-23 20:00 UTC),
        ));
        let audit = Audit::new(store.clone(), clock.clone(), None);
        let cfg = Grants {
            trust: vec![TrustKey {
                kid: "fleet-example".into(),
                public_key: public,
            }],
            future_skew: Duration::from_secs(60),
            clock_rollback_alarm: Duration::from_secs(3600),
        };
        let engine =
            GrantEngine::open(store, audit, clock, SiteId::new("s-1").expect("site"), &cfg)
                .expect("engine");
        Fx {
            key,
            public,
            engine,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fx = fx();
    let parsed = check_bundle_payload(data);
    let envelope = fleet::sign(Kind::Bundle, "fleet-example", &fx.key, data);
    let keys = |kid: &str| {
        if kid == "fleet-example" {
            Ok(fx.public)
        } else {
            Err(KeyError::Unknown)
        }
    };
    let verified = VerifiedBundle::verify(&envelope, &keys);
    // The box and the fleet tool must agree on what is a valid payload.
    assert_eq!(
        parsed.is_ok(),
        verified.is_ok(),
        "check and verify disagree"
    );
    if parsed.is_ok() {
        let _ = fx.engine.apply(Some(Kind::Bundle), &envelope, "fuzz");
    }
});
