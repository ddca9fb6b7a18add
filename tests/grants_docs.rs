//! The worked example in docs/grants.md is real: its key comes from the seed shown, its
//! envelope is what the fleet library produces for the payload shown, the signature verifies,
//! and the box applies it. Regenerate with
//! `cargo test --test grants_docs -- --ignored --nocapture print_docs_example`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

use std::sync::Arc;

use sitegate::audit::Audit;
use sitegate::clock::{ManualClock, SharedClock};
use sitegate::grants::{ApplyOutcome, KeyError, Kind, VerifiedBundle, VerifiedKeys, fleet};
use sitegate::model::SiteId;
use sitegate::store::Store;

const DOC: &str = include_str!("../docs/grants.md");

fn block(tag: &str) -> String {
    let start = format!("```{tag}\n");
    let i = DOC
        .find(&start)
        .unwrap_or_else(|| panic!("no block `{tag}` in docs/grants.md"));
    let rest = &DOC[i + start.len()..];
    let j = rest.find("```").unwrap();
    rest[..j].trim_end_matches('\n').to_string()
}

fn seed(tag: &str) -> [u8; 32] {
    hex::decode(block(tag)).unwrap().try_into().unwrap()
}

const PAYLOAD: &str = r#"{"grants":[{"expires_at":"2027-11-23T00:00:00Z","id":"g-1","role":"technician","scope":{"site":"s-1"},"user":"u-1"},{"id":"g-2","role":"control-only","scope":{"unit":"hvac-1"},"user":"u-2"}],"issued_at":"2026-11-23T20:00:00Z","policy":{"features":["view","control","diagnose","configure","manage_users"],"management":"pro","max_offline":{"admin":"30d","technician":"30d"}},"revoked":["g-0"],"seq":42,"site":"s-1","users":[{"active":true,"email":"ana@example.com","id":"u-1","name":"Ana","password":"PASSWORD"},{"active":true,"email":"ben@example.com","id":"u-2","name":"Ben"}]}"#;

#[test]
#[ignore = "generator for docs/grants.md"]
fn print_docs_example() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let key = fleet::keypair_from_seed(&seed).unwrap();
    let verifier = sitegate::grants::password::hash_password_with_salt(
        b"correct horse battery staple",
        600_000,
        b"sitegate-example",
    )
    .unwrap();
    let payload = PAYLOAD.replace("PASSWORD", &verifier);
    println!("seed {}", hex::encode(seed));
    println!("pk {}", fleet::public_key_b64(&key));
    println!("payload {payload}");
    println!(
        "env {}",
        String::from_utf8(fleet::sign(
            Kind::Bundle,
            "fleet-example",
            &key,
            payload.as_bytes()
        ))
        .unwrap()
    );
    let seed2: [u8; 32] = std::array::from_fn(|i| 32 + i as u8);
    let key2 = fleet::keypair_from_seed(&seed2).unwrap();
    let keys = format!(
        r#"{{"issued_at":"2026-12-01T00:00:00Z","keys":[{{"kid":"fleet-example-2","public_key":"{}"}}],"seq":1}}"#,
        fleet::public_key_b64(&key2)
    );
    println!("seed2 {}", hex::encode(seed2));
    println!("pk2 {}", fleet::public_key_b64(&key2));
    println!("keys {keys}");
    println!(
        "keysenv {}",
        String::from_utf8(fleet::sign_keys(
            &[("fleet-example", &key), ("fleet-example-2", &key2)],
            keys.as_bytes()
        ))
        .unwrap()
    );
}

#[test]
fn the_worked_bundle_example_in_the_docs_verifies_and_applies() {
    let key = fleet::keypair_from_seed(&seed("text example-seed")).unwrap();
    let pk = fleet::public_key(&key).unwrap();
    assert_eq!(
        fleet::public_key_b64(&key),
        block("text example-public-key")
    );
    let payload = block("json example-payload");
    let envelope = block("json example-envelope");
    // The envelope is exactly what the fleet library makes (Ed25519 is deterministic).
    assert_eq!(
        envelope.as_bytes(),
        fleet::sign(Kind::Bundle, "fleet-example", &key, payload.as_bytes())
    );
    let env: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(
        sitegate::util_b64::decode(env["payload"].as_str().unwrap()).unwrap(),
        payload.as_bytes()
    );
    assert_eq!(
        block("text example-signing-input-start"),
        format!("sitegate/v1/bundle\n{}", &payload[..40])
    );
    let provider = |kid: &str| {
        if kid == "fleet-example" {
            Ok(pk)
        } else {
            Err(KeyError::Unknown)
        }
    };
    let vb = VerifiedBundle::verify(envelope.as_bytes(), &provider).unwrap();
    assert_eq!(vb.bundle().seq, 42);
    let ana = &vb.bundle().users[0];
    assert!(sitegate::grants::password::verify_password(
        ana.password.as_deref().unwrap(),
        b"correct horse battery staple"
    ));

    // A box provisioned with that key applies it.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-11-23 20:05 UTC),
    ));
    let audit = Audit::new(store.clone(), clock.clone(), None);
    let cfg = sitegate::config::Grants {
        trust: vec![sitegate::config::TrustKey {
            kid: "fleet-example".into(),
            public_key: pk,
        }],
        future_skew: std::time::Duration::from_secs(60),
        clock_rollback_alarm: std::time::Duration::from_secs(3600),
    };
    let engine =
        sitegate::grants::GrantEngine::open(store, audit, clock, SiteId::new("s-1").unwrap(), &cfg)
            .unwrap();
    assert_eq!(
        engine.apply(None, envelope.as_bytes(), "docs").unwrap(),
        ApplyOutcome::Applied { seq: 42 }
    );

    // The key-rotation example is signed by the old key and by the new one.
    let key2 = fleet::keypair_from_seed(&seed("text example-seed-2")).unwrap();
    let keys_payload = block("json example-keys-payload");
    let keys_env = block("json example-keys-envelope");
    assert_eq!(
        keys_env.as_bytes(),
        fleet::sign_keys(
            &[("fleet-example", &key), ("fleet-example-2", &key2)],
            keys_payload.as_bytes()
        )
    );
    let vk = VerifiedKeys::verify(keys_env.as_bytes(), &provider).unwrap();
    assert_eq!(vk.keys[0].public_key, fleet::public_key(&key2).unwrap());
}

/// The limit of the worked example of bundles in parts (small, so that the example has parts).
const PARTS_EXAMPLE_LIMIT: usize = 1024;

#[test]
#[ignore = "generator for docs/grants.md"]
fn print_docs_parts_example() {
    let key = fleet::keypair_from_seed(&seed("text example-seed")).unwrap();
    let envelope = block("json example-envelope");
    let s = fleet::split_bundle(
        &key,
        "fleet-example",
        envelope.as_bytes(),
        PARTS_EXAMPLE_LIMIT,
    )
    .unwrap();
    let opened: serde_json::Value = serde_json::from_slice(&s.manifest).unwrap();
    let payload = sitegate::util_b64::decode(opened["payload"].as_str().unwrap()).unwrap();
    println!("manifest-payload {}", String::from_utf8(payload).unwrap());
    println!(
        "manifest {}",
        String::from_utf8(s.manifest.clone()).unwrap()
    );
    for (i, p) in s.parts.iter().enumerate() {
        println!("part-{i} {}", String::from_utf8(p.clone()).unwrap());
    }
}

#[test]
fn the_worked_parts_example_in_the_docs_is_what_the_fleet_tool_makes_and_applies() {
    let key = fleet::keypair_from_seed(&seed("text example-seed")).unwrap();
    let pk = fleet::public_key(&key).unwrap();
    let envelope = block("json example-envelope");
    let s = fleet::split_bundle(
        &key,
        "fleet-example",
        envelope.as_bytes(),
        PARTS_EXAMPLE_LIMIT,
    )
    .unwrap();
    // Exactly the documented messages, each within the limit.
    assert_eq!(s.manifest, block("json example-manifest").as_bytes());
    let opened: serde_json::Value = serde_json::from_slice(&s.manifest).unwrap();
    assert_eq!(
        sitegate::util_b64::decode(opened["payload"].as_str().unwrap()).unwrap(),
        block("json example-manifest-payload").as_bytes()
    );
    assert_eq!(s.parts.len(), 2);
    for (i, p) in s.parts.iter().enumerate() {
        assert_eq!(
            *p,
            block(&format!("json example-part-{i}")).as_bytes(),
            "part {i}"
        );
        assert!(p.len() <= PARTS_EXAMPLE_LIMIT);
    }
    assert!(s.manifest.len() <= PARTS_EXAMPLE_LIMIT);
    // The manifest names the SHA-256 of each part's data and of the whole envelope.
    let m: serde_json::Value =
        serde_json::from_str(&block("json example-manifest-payload")).unwrap();
    let mut whole = Vec::new();
    for (i, p) in s.parts.iter().enumerate() {
        let part: serde_json::Value = serde_json::from_slice(p).unwrap();
        let data = sitegate::util_b64::decode(part["data"].as_str().unwrap()).unwrap();
        assert_eq!(m["parts"][i], sitegate::util::sha256_hex(&data));
        whole.extend_from_slice(&data);
    }
    assert_eq!(whole, envelope.as_bytes());
    assert_eq!(m["sha256"], sitegate::util::sha256_hex(&whole));
    assert_eq!(m["size"], whole.len());

    // A box applies the set in any order: part 1, the manifest, part 0.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-11-23 20:05 UTC),
    ));
    let audit = Audit::new(store.clone(), clock.clone(), None);
    let cfg = sitegate::config::Grants {
        trust: vec![sitegate::config::TrustKey {
            kid: "fleet-example".into(),
            public_key: pk,
        }],
        future_skew: std::time::Duration::from_secs(60),
        clock_rollback_alarm: std::time::Duration::from_secs(3600),
    };
    let engine =
        sitegate::grants::GrantEngine::open(store, audit, clock, SiteId::new("s-1").unwrap(), &cfg)
            .unwrap();
    let apply = |b: &[u8]| engine.apply(Some(Kind::Bundle), b, "docs").unwrap();
    assert_eq!(
        apply(&s.parts[1]),
        ApplyOutcome::PartPending {
            seq: 42,
            received: 1,
            count: None
        }
    );
    assert_eq!(
        apply(&s.manifest),
        ApplyOutcome::PartPending {
            seq: 42,
            received: 1,
            count: Some(2)
        }
    );
    assert_eq!(apply(&s.parts[0]), ApplyOutcome::Applied { seq: 42 });
    // Redelivered (retained, on every reconnect): duplicates.
    assert_eq!(apply(&s.manifest), ApplyOutcome::Duplicate { seq: 42 });
    assert_eq!(apply(&s.parts[1]), ApplyOutcome::Duplicate { seq: 42 });
}
