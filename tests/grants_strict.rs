//! Keys and signed bytes are checked strictly: weak Ed25519 public keys (the 8 small-order points
//! in every encoding, the all-zero key, off-curve and mixed-order keys) are refused wherever a key
//! enters the engine, non-canonical signatures (S >= L, small-order R) are refused, and a signed
//! envelope or payload that repeats a key in any JSON object is `malformed`. Every refusal is
//! audited, shown in the grants state, and leaves the applied state (and what a restart loads)
//! untouched.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

mod grants_common;

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::CompressedEdwardsY;
use grants_common::*;
use serde_json::{Value, json};
use sitegate::grants::envelope::signing_input;
use sitegate::grants::{ApplyOutcome, Kind, Reason};

/// The 8 small-order points in their canonical encodings (hex, as published in "Taming the many
/// EdDSAs"), written out here independently of the code under test.
const SMALL_ORDER: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
];

/// Non-canonical encodings of small-order points: y = p and y = p + 1 (which read as 0 and 1)
/// with either sign, and the sign bit set on the two points with x = 0 (y = 1, y = -1).
const SMALL_ORDER_NON_CANONICAL: [&str; 6] = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

fn bytes32(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// Every weak key with what the refusal says about it.
fn weak_keys() -> Vec<(String, [u8; 32], &'static str)> {
    let mut out = Vec::new();
    for h in SMALL_ORDER {
        out.push((format!("small-order {h}"), bytes32(h), "small-order"));
    }
    for h in SMALL_ORDER_NON_CANONICAL {
        out.push((
            format!("non-canonical {h}"),
            bytes32(h),
            "not canonically encoded",
        ));
    }
    out.push(("all-zero".into(), [0u8; 32], "small-order"));
    // y = 2 has no x on the curve.
    let mut off = [0u8; 32];
    off[0] = 2;
    out.push(("off-curve y=2".into(), off, "not a point on the curve"));
    // A real key plus a point of order 8: on the curve, canonical, not small-order, yet not in
    // the prime-order subgroup.
    let real = fleet_pk(7);
    let mixed = CompressedEdwardsY(real).decompress().unwrap() + EIGHT_TORSION[1];
    out.push((
        "mixed-order".into(),
        mixed.compress().to_bytes(),
        "small-order component",
    ));
    out
}

fn fleet_pk(seed: u8) -> [u8; 32] {
    *sitegate::grants::fleet::public_key(&key(seed))
        .unwrap()
        .as_bytes()
}

/// R = the identity point, S = 0: "verifies" under the identity key for every message.
fn identity_forgery() -> [u8; 64] {
    let mut sig = [0u8; 64];
    sig[0] = 1;
    sig
}

/// A keys envelope signed by the trusted key A that keeps A and adds `weak` under `kid`, with
/// `own_sig` as the new key's "proof of possession".
fn keys_envelope_adding(kid: &str, weak: &[u8; 32], own_sig: &[u8; 64]) -> Vec<u8> {
    let payload = serde_json::to_vec(&json!({
        "seq": 1,
        "issued_at": ts(T0),
        "keys": [
            {"kid": KID_A, "public_key": sitegate::grants::fleet::public_key_b64(&key(1))},
            {"kid": kid, "public_key": b64(weak)},
        ]
    }))
    .unwrap();
    let sig_a = key(1).sign(&signing_input(Kind::Keys, &payload));
    serde_json::to_vec(&json!({
        "v": 1,
        "kind": "keys",
        "payload": b64(&payload),
        "sigs": [
            {"kid": KID_A, "sig": b64(sig_a.as_ref())},
            {"kid": kid, "sig": b64(own_sig)},
        ]
    }))
    .unwrap()
}

/// A single-signature envelope with a given signature.
fn envelope_with_sig(kind: Kind, kid: &str, payload: &[u8], sig: &[u8; 64]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1, "kind": kind.as_str(), "kid": kid, "payload": b64(payload), "sig": b64(sig)
    }))
    .unwrap()
}

/// Bundle 6 with a new user `u-evil` who is site admin.
fn evil_bundle() -> Vec<u8> {
    let mut b = bundle(6);
    b["users"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "u-evil", "email": "evil@example.com", "name": "Eve", "active": true}));
    b["grants"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "g-evil", "user": "u-evil", "role": "admin", "scope": {"site": SITE}}));
    serde_json::to_vec(&b).unwrap()
}

/// A box with bundles 3 and 5 applied, clock at bundle 6's issue time.
fn base() -> Fx {
    let fx = Fx::new();
    fx.apply_seq(3);
    fx.apply_seq(5);
    fx.clock.set(issued(6));
    fx
}

fn has_user(engine: &sitegate::grants::GrantEngine, id: &str) -> bool {
    engine.snapshot().users.iter().any(|u| u.id.as_str() == id)
}

/// Applies `bytes` and checks the refusal: its reason, that the message mentions `says`, the
/// audit record, the grants state, and that nothing changed, also after a restart.
fn assert_refused(
    fx: &Fx,
    hint: Option<Kind>,
    bytes: &[u8],
    reason: Reason,
    says: &str,
    what: &str,
) {
    let state = fx.engine.snapshot();
    let trust = fx.engine.trust_set();
    let seq = fx.engine.state_json()["seq"].clone();
    let err = fx.engine.apply(hint, bytes, "attack").expect_err(what);
    assert_eq!(err.reason, reason, "{what}: {}", err.message);
    assert!(
        err.message.contains(says),
        "{what}: `{}` does not say `{says}`",
        err.message
    );
    assert_eq!(*fx.engine.snapshot(), *state, "{what}: state changed");
    assert_eq!(*fx.engine.trust_set(), *trust, "{what}: trust changed");
    let reopened = fx.reopen();
    assert_eq!(*reopened.snapshot(), *state, "{what}: stored state changed");
    assert_eq!(
        *reopened.trust_set(),
        *trust,
        "{what}: stored trust changed"
    );
    let audit_kind = if hint == Some(Kind::Keys) {
        "keys_rejected"
    } else {
        "grant_rejected"
    };
    let rec = &fx.audit_of_kind(audit_kind)[0];
    assert_eq!(rec.outcome, "rejected", "{what}");
    assert_eq!(rec.detail["reason"], json!(reason.as_str()), "{what}");
    assert_eq!(rec.detail["source"], json!("attack"), "{what}");
    let sj = fx.engine.state_json();
    assert_eq!(sj["status"], json!("rejected"), "{what}");
    assert_eq!(sj["rejection"]["reason"], json!(reason.as_str()), "{what}");
    assert_eq!(sj["seq"], seq, "{what}: seq moved");
}

#[test]
fn the_weak_key_vectors_are_the_eight_small_order_points() {
    let mut listed: Vec<[u8; 32]> = SMALL_ORDER.iter().map(|h| bytes32(h)).collect();
    let mut torsion: Vec<[u8; 32]> = EIGHT_TORSION
        .iter()
        .map(|p| p.compress().to_bytes())
        .collect();
    listed.sort_unstable();
    torsion.sort_unstable();
    assert_eq!(listed, torsion);
    for h in SMALL_ORDER_NON_CANONICAL {
        let p = CompressedEdwardsY(bytes32(h)).decompress().unwrap();
        assert!(p.is_small_order(), "{h}");
        assert_ne!(p.compress().to_bytes(), bytes32(h), "{h}");
    }
}

#[test]
fn a_trusted_key_set_adding_any_weak_key_is_refused_as_weak_key_and_changes_nothing() {
    let fx = base();
    for (label, weak, says) in weak_keys() {
        let env = keys_envelope_adding("k-weak", &weak, &identity_forgery());
        assert_refused(&fx, Some(Kind::Keys), &env, Reason::WeakKey, says, &label);
    }
    // The same key set with a real new key (which signed) is applied: the check is the key.
    let b = key(2);
    let ks = keyset(1, &[(KID_A, &key(1)), (KID_B, &b)]);
    let env = sign_keyset(&ks, &[(KID_A, &key(1)), (KID_B, &b)]);
    assert!(matches!(
        fx.engine.apply(Some(Kind::Keys), &env, "test").unwrap(),
        ApplyOutcome::KeysApplied { .. }
    ));
}

#[test]
fn the_identity_key_attack_is_refused_and_a_bundle_forged_under_its_kid_is_never_applied() {
    let fx = base();
    let identity = bytes32(SMALL_ORDER[0]);
    // Step 1: a key set correctly signed by the trusted key A, adding the identity point with an
    // "own signature" R = identity, S = 0 that needs no private key.
    let env = keys_envelope_adding("k-evil", &identity, &identity_forgery());
    assert_refused(
        &fx,
        Some(Kind::Keys),
        &env,
        Reason::WeakKey,
        "small-order",
        "identity key set",
    );
    // Step 2: a bundle "signed" under that kid, making a new user site admin.
    let forged = envelope_with_sig(Kind::Bundle, "k-evil", &evil_bundle(), &identity_forgery());
    assert_refused(
        &fx,
        None,
        &forged,
        Reason::UnknownKey,
        "k-evil",
        "forged bundle",
    );
    assert!(!has_user(&fx.engine, "u-evil"));

    // A box that stored the identity key before weak keys were refused never uses it again.
    fx.store
        .with_conn(|c| {
            c.execute(
                "INSERT INTO trust_keys(kid, public_key, not_after_ms, retired_ms, source, added_ms)
                 VALUES ('k-evil', ?1, NULL, NULL, 'keys:1', 0)",
                [identity.to_vec()],
            )?;
            Ok(())
        })
        .unwrap();
    let restarted = fx.reopen();
    let trust = restarted.trust_set();
    assert!(!trust.keys.contains_key("k-evil"));
    assert!(trust.weak.contains("k-evil"));
    let err = restarted.apply(None, &forged, "attack").unwrap_err();
    assert_eq!(err.reason, Reason::RetiredKey, "{}", err.message);
    assert!(!has_user(&restarted, "u-evil"));
    assert_eq!(restarted.snapshot().seq, 5);
    // The kid counts as retired: a key set cannot give it a (real) key again, nor can an import.
    let real = key(3);
    let ks = keyset(1, &[(KID_A, &key(1)), ("k-evil", &real)]);
    let env = sign_keyset(&ks, &[(KID_A, &key(1)), ("k-evil", &real)]);
    let err = restarted
        .apply(Some(Kind::Keys), &env, "attack")
        .unwrap_err();
    assert_eq!(err.reason, Reason::RetiredKey, "{}", err.message);
    let anchors = sitegate::grants::trust::parse_import_file(
        json!({"kid": "k-evil", "public_key": sitegate::grants::fleet::public_key_b64(&real)})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let imported = fx
        .store
        .with_conn(|c| Ok(sitegate::grants::trust::import(c, &anchors, issued(6))))
        .unwrap();
    assert!(
        imported.unwrap_err().to_string().contains("weak key"),
        "import refused"
    );
    // A key rotation marks the stored weak key retired in the database too.
    let b = key(2);
    let ks = keyset(1, &[(KID_A, &key(1)), (KID_B, &b)]);
    restarted
        .apply(
            Some(Kind::Keys),
            &sign_keyset(&ks, &[(KID_A, &key(1)), (KID_B, &b)]),
            "test",
        )
        .unwrap();
    let retired: Option<i64> = fx
        .store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT retired_ms FROM trust_keys WHERE kid = 'k-evil'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert!(retired.is_some());
}

/// L = 2^252 + 27742317777372353535851937790883648493, little-endian.
fn order_l() -> [u8; 32] {
    let mut l = [0u8; 32];
    l[..16].copy_from_slice(&[
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14,
    ]);
    l[31] = 0x10;
    l
}

/// The signature with S replaced by S + L (still < 2^256, and the same scalar mod L).
fn plus_l(sig: &[u8]) -> String {
    let l = order_l();
    let mut out = sig.to_vec();
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
        out[32 + i] = (v & 0xff) as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    b64(&out)
}

#[test]
fn a_signature_with_s_plus_l_is_refused_as_non_canonical_for_bundles_tokens_and_key_sets() {
    let fx = base();
    let bundle6 = sign_bundle(&bundle(6));
    let tampered = edit_envelope(&bundle6, |m| {
        let sig = unb64(m["sig"].as_str().unwrap());
        m["sig"] = json!(plus_l(&sig));
    });
    assert_refused(
        &fx,
        None,
        &tampered,
        Reason::NonCanonicalSignature,
        "not canonical",
        "bundle S+L",
    );

    let tok = sign(
        Kind::Token,
        KID_A,
        &key(1),
        &token(T0 + time::Duration::days(400)),
    );
    let tampered = edit_envelope(&tok, |m| {
        let sig = unb64(m["sig"].as_str().unwrap());
        m["sig"] = json!(plus_l(&sig));
    });
    assert_refused(
        &fx,
        None,
        &tampered,
        Reason::NonCanonicalSignature,
        "not canonical",
        "token S+L",
    );

    let b = key(2);
    let ks = sign_keyset(
        &keyset(1, &[(KID_A, &key(1)), (KID_B, &b)]),
        &[(KID_A, &key(1)), (KID_B, &b)],
    );
    for i in 0..2 {
        let tampered = edit_envelope(&ks, |m| {
            let sig = unb64(m["sigs"][i]["sig"].as_str().unwrap());
            m["sigs"][i]["sig"] = json!(plus_l(&sig));
        });
        assert_refused(
            &fx,
            Some(Kind::Keys),
            &tampered,
            Reason::NonCanonicalSignature,
            "not canonical",
            &format!("key set S+L on signature {i}"),
        );
    }
    // The untampered originals are accepted.
    assert!(fx.apply(&bundle6).is_ok());
    assert!(fx.engine.apply(Some(Kind::Keys), &ks, "test").is_ok());
}

/// `v` serialized with `key` added a second time (with `value`) to the object at `pointer`.
fn with_duplicate(v: &Value, pointer: &str, key: &str, value: Value) -> Vec<u8> {
    let mut v = v.clone();
    let obj = v.pointer_mut(pointer).unwrap().as_object_mut().unwrap();
    assert!(obj.contains_key(key), "{pointer} has no `{key}` to repeat");
    obj.insert("__dup__".into(), value);
    let text = serde_json::to_string(&v).unwrap();
    assert_eq!(text.matches("\"__dup__\"").count(), 1);
    text.replace("\"__dup__\"", &format!("\"{key}\""))
        .into_bytes()
}

#[test]
fn a_signed_payload_repeating_a_key_in_any_object_is_malformed_and_changes_nothing() {
    let fx = base();
    let b = bundle(6);
    // Every object of the bundle payload: the top level, the policy, the `max_offline` map (the
    // only map-typed field), a user, a grant and a grant's scope.
    let bundle_cases: Vec<(&str, Vec<u8>)> = vec![
        ("bundle seq", with_duplicate(&b, "", "seq", json!(99))),
        ("bundle site", with_duplicate(&b, "", "site", json!(SITE))),
        (
            "policy management",
            with_duplicate(&b, "/policy", "management", json!("independent")),
        ),
        (
            "max_offline admin",
            with_duplicate(&b, "/policy/max_offline", "admin", json!("3650d")),
        ),
        (
            "max_offline technician, same value",
            with_duplicate(&b, "/policy/max_offline", "technician", json!("30d")),
        ),
        (
            "user name",
            with_duplicate(&b, "/users/0", "name", json!("Mallory")),
        ),
        (
            "user password",
            with_duplicate(&b, "/users/0", "password", json!(ana_verifier())),
        ),
        (
            "grant role",
            with_duplicate(&b, "/grants/0", "role", json!("admin")),
        ),
        (
            "grant expires_at",
            with_duplicate(&b, "/grants/2", "expires_at", json!("2099-01-01T00:00:00Z")),
        ),
        (
            "grant scope unit",
            with_duplicate(&b, "/grants/1/scope", "unit", json!("gen-1")),
        ),
    ];
    for (what, payload) in bundle_cases {
        let env = fleet_sign(Kind::Bundle, &payload);
        assert_refused(&fx, None, &env, Reason::Malformed, "duplicate key", what);
    }
    // The same key written with an escape is the same key.
    let escaped = String::from_utf8(with_duplicate(
        &b,
        "/policy/max_offline",
        "admin",
        json!("3650d"),
    ))
    .unwrap()
    .replacen("\"admin\"", "\"\\u0061dmin\"", 1);
    assert_refused(
        &fx,
        None,
        &fleet_sign(Kind::Bundle, escaped.as_bytes()),
        Reason::Malformed,
        "duplicate key",
        "max_offline admin escaped",
    );

    // Token payload: top level, user, grant, scope.
    let t = token(T0 + time::Duration::days(400));
    for (what, payload) in [
        ("token site", with_duplicate(&t, "", "site", json!(SITE))),
        (
            "token user active",
            with_duplicate(&t, "/user", "active", json!(false)),
        ),
        (
            "token grant role",
            with_duplicate(&t, "/grant", "role", json!("admin")),
        ),
        (
            "token grant scope",
            with_duplicate(&t, "/grant/scope", "site", json!(SITE)),
        ),
    ] {
        let env = fleet_sign(Kind::Token, &payload);
        assert_refused(&fx, None, &env, Reason::Malformed, "duplicate key", what);
    }

    // Keys payload: top level and a key entry (the signatures cover the repeated bytes).
    let kb = key(2);
    let ks = keyset(1, &[(KID_A, &key(1)), (KID_B, &kb)]);
    let signers = [(KID_A, &key(1)), (KID_B, &kb)];
    let signers: Vec<(&str, &ring::signature::Ed25519KeyPair)> =
        signers.iter().map(|(k, p)| (*k, *p)).collect();
    for (what, payload) in [
        ("keys seq", with_duplicate(&ks, "", "seq", json!(1))),
        (
            "keys public_key",
            with_duplicate(
                &ks,
                "/keys/1",
                "public_key",
                json!(b64(&bytes32(SMALL_ORDER[0]))),
            ),
        ),
    ] {
        let env = sitegate::grants::fleet::sign_keys(&signers, &payload);
        assert_refused(
            &fx,
            Some(Kind::Keys),
            &env,
            Reason::Malformed,
            "duplicate key",
            what,
        );
    }

    // The envelope itself: a repeated member at the top and inside a `sigs` entry.
    let good = sign_bundle(&b);
    let text = String::from_utf8(good.clone()).unwrap();
    let dup_top = text.replacen("{", "{\"kid\":\"fleet-b\",", 1);
    assert_refused(
        &fx,
        None,
        dup_top.as_bytes(),
        Reason::Malformed,
        "duplicate key",
        "envelope kid",
    );
    let ks_env = sign_keyset(&ks, &signers);
    let ks_text = String::from_utf8(ks_env.clone()).unwrap();
    let dup_sig = ks_text.replacen("{\"kid\":", "{\"kid\":\"x\",\"kid\":", 1);
    assert_ne!(dup_sig, ks_text);
    assert_refused(
        &fx,
        Some(Kind::Keys),
        dup_sig.as_bytes(),
        Reason::Malformed,
        "duplicate key",
        "sigs entry kid",
    );

    // Without the repetitions the same payloads apply.
    assert!(fx.apply(&good).is_ok());
    assert_eq!(fx.engine.snapshot().seq, 6);
    assert!(fx.engine.apply(Some(Kind::Keys), &ks_env, "test").is_ok());
}

fn fleet_sign(kind: Kind, payload: &[u8]) -> Vec<u8> {
    sitegate::grants::fleet::sign(kind, KID_A, &key(1), payload)
}

// ---------------------------------------------------------------------------------------------
// The other ways a key enters: the binary's `provision --trust`, `provision --trust-file`,
// `trust import`, config anchors (`check-config`), and the device key.
// ---------------------------------------------------------------------------------------------

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn sitegate(args: &[&str]) -> Out {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn provision_refuses_every_weak_trust_key_with_exit_78_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sitegate.toml");
    let state = dir.path().join("state");
    let file = dir.path().join("trust.json");
    for (label, weak, says) in weak_keys() {
        let trust = format!("fleet-w={}", b64(&weak));
        let base = [
            "provision",
            "--config",
            path(&config),
            "--site",
            "s-1",
            "--gateway",
            "gw-1",
            "--state-dir",
            path(&state),
            "--non-interactive",
        ];
        let mut args = base.to_vec();
        args.extend_from_slice(&["--trust", &trust]);
        let out = sitegate(&args);
        assert_eq!(out.code, 78, "{label}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("grants.trust[0].public_key")
                && out.stderr.contains("weak_key")
                && out.stderr.contains(says),
            "{label}: {}",
            out.stderr
        );
        // The trust file form (that of `trust import`), next to a good key.
        std::fs::write(
            &file,
            json!({"keys": [
                {"kid": "fleet-a", "public_key": b64(&fleet_pk(1))},
                {"kid": "fleet-w", "public_key": b64(&weak)},
            ]})
            .to_string(),
        )
        .unwrap();
        let mut args = base.to_vec();
        args.extend_from_slice(&["--trust-file", path(&file)]);
        let out = sitegate(&args);
        assert_eq!(out.code, 78, "{label}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("weak_key") && out.stderr.contains(says),
            "{label}: {}",
            out.stderr
        );
        assert!(!config.exists(), "{label}: config written");
        assert!(!state.exists(), "{label}: state written");
    }
    // A real key is accepted by the same command.
    let trust = format!("fleet-a={}", b64(&fleet_pk(1)));
    let out = sitegate(&[
        "provision",
        "--config",
        path(&config),
        "--site",
        "s-1",
        "--gateway",
        "gw-1",
        "--state-dir",
        path(&state),
        "--api-listen",
        "127.0.0.1:0",
        "--non-interactive",
        "--trust",
        &trust,
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

/// A provisioned-looking config trusting `fleet-a` (and `extra` as a second anchor).
fn write_config(dir: &std::path::Path, extra: Option<&[u8; 32]>) -> std::path::PathBuf {
    let cfg = dir.join("sitegate.toml");
    let mut text = format!(
        "[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n[state]\ndir = \"state\"\n\
         [[grants.trust]]\nkid = \"fleet-a\"\npublic_key = \"{}\"\n",
        b64(&fleet_pk(1))
    );
    if let Some(k) = extra {
        text.push_str(&format!(
            "[[grants.trust]]\nkid = \"fleet-w\"\npublic_key = \"{}\"\n",
            b64(k)
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn trust_import_refuses_every_weak_key_and_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), None);
    let imp = dir.path().join("import.json");
    let good_b = b64(&fleet_pk(2));
    for (label, weak, says) in weak_keys() {
        // One key alone, and a set where a good key comes first: nothing is added either way.
        for body in [
            json!({"kid": "fleet-w", "public_key": b64(&weak)}),
            json!({"keys": [
                {"kid": "fleet-b", "public_key": good_b},
                {"kid": "fleet-w", "public_key": b64(&weak)},
            ]}),
        ] {
            std::fs::write(&imp, body.to_string()).unwrap();
            let out = sitegate(&["trust", "import", path(&imp), "-c", path(&cfg)]);
            assert_eq!(out.code, 1, "{label}: {}{}", out.stdout, out.stderr);
            assert!(
                out.stderr.contains("weak_key") && out.stderr.contains(says),
                "{label}: {}",
                out.stderr
            );
        }
    }
    let list = sitegate(&["trust", "list", "-c", path(&cfg)]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        !list.stdout.contains("fleet-w") && !list.stdout.contains("fleet-b"),
        "{}",
        list.stdout
    );
    // A repeated key in the import file is refused too.
    std::fs::write(
        &imp,
        format!(r#"{{"kid":"fleet-b","public_key":"{good_b}","kid":"fleet-c"}}"#),
    )
    .unwrap();
    let out = sitegate(&["trust", "import", path(&imp), "-c", path(&cfg)]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("duplicate key"), "{}", out.stderr);
    // The good key alone is added.
    std::fs::write(
        &imp,
        json!({"kid": "fleet-b", "public_key": good_b}).to_string(),
    )
    .unwrap();
    let out = sitegate(&["trust", "import", path(&imp), "-c", path(&cfg)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("1 key(s) added"), "{}", out.stdout);
}

#[test]
fn check_config_refuses_every_weak_trust_anchor_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    for (label, weak, says) in weak_keys() {
        let cfg = write_config(dir.path(), Some(&weak));
        let out = sitegate(&["check-config", "--config", path(&cfg)]);
        assert_eq!(out.code, 78, "{label}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("grants.trust[1].public_key")
                && out.stderr.contains("weak_key")
                && out.stderr.contains(says),
            "{label}: {}",
            out.stderr
        );
    }
    let cfg = write_config(dir.path(), Some(&fleet_pk(2)));
    let out = sitegate(&["check-config", "--config", path(&cfg)]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn a_device_key_file_whose_public_key_is_weak_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A PKCS#8 v2 document ends with the 32-byte public key.
    let mut doc = sitegate::grants::fleet::generate_pkcs8().unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&doc).unwrap();
    assert_eq!(
        &doc[doc.len() - 32..],
        ring::signature::KeyPair::public_key(&pair).as_ref()
    );
    let good = sitegate::delegation::DeviceKey::load_or_create(dir.path());
    assert!(good.is_ok(), "a generated device key loads");
    for h in SMALL_ORDER.iter().chain(SMALL_ORDER_NON_CANONICAL.iter()) {
        let at = doc.len() - 32;
        doc[at..].copy_from_slice(&bytes32(h));
        std::fs::write(dir.path().join("device.pk8"), &doc).unwrap();
        let err = sitegate::delegation::DeviceKey::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("device.pk8"), "{h}: {err}");
    }
}

#[test]
fn the_fleet_tool_refuses_weak_keys_to_verify_with_or_to_sign_into_a_key_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_file = d.join("a.pk8");
    let out = sitegate(&[
        "fleet",
        "keygen",
        "--out",
        path(&key_file),
        "--kid",
        "fleet-a",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bundle_file = d.join("bundle.json");
    std::fs::write(&bundle_file, serde_json::to_vec(&bundle(1)).unwrap()).unwrap();
    let env_file = d.join("bundle.env");
    let out = sitegate(&[
        "fleet",
        "sign-bundle",
        "--key",
        path(&key_file),
        "--kid",
        "fleet-a",
        "--in",
        path(&bundle_file),
        "--out",
        path(&env_file),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let desc = d.join("keys.json");
    for (label, weak, says) in weak_keys() {
        let out = sitegate(&[
            "fleet",
            "verify",
            "--in",
            path(&env_file),
            "--kid",
            "fleet-a",
            "--public-key",
            &b64(&weak),
        ]);
        assert_eq!(out.code, 1, "{label}: {}", out.stdout);
        assert!(
            out.stderr.contains("weak_key") && out.stderr.contains(says),
            "{label}: {}",
            out.stderr
        );
        std::fs::write(
            &desc,
            json!({"seq": 1, "issued_at": ts(T0), "keys": [
                {"kid": "fleet-w", "public_key": b64(&weak)}
            ]})
            .to_string(),
        )
        .unwrap();
        let out = sitegate(&[
            "fleet",
            "sign-keys",
            "--key",
            path(&key_file),
            "--kid",
            "fleet-a",
            "--in",
            path(&desc),
        ]);
        assert_eq!(out.code, 1, "{label}: {}", out.stdout);
        assert!(
            out.stderr.contains("weak_key") && out.stderr.contains(says),
            "{label}: {}",
            out.stderr
        );
    }
}
