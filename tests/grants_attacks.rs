//! A table of hostile envelopes. Every one must be rejected with its reason, audited, and leave
//! the applied state (access state, trust keys, and what a restart would load) untouched.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

mod grants_common;

use grants_common::*;
use serde_json::{Value, json};
use sitegate::grants::{Kind, MAX_ENVELOPE_BYTES, Reason};

struct Case {
    name: &'static str,
    hint: Option<Kind>,
    reason: Reason,
    audit_kind: &'static str,
    /// Runs after the base state (bundles 3 and 5 applied, clock at bundle 5's issue time).
    prepare: fn(&Fx),
    make: fn(&Fx) -> Vec<u8>,
}

fn nothing(_: &Fx) {}

fn deep(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

fn rotate_to_b(fx: &Fx) {
    let b = key(2);
    let a = key(1);
    let ks = keyset(1, &[(KID_B, &b)]);
    fx.engine
        .apply(
            Some(Kind::Keys),
            &sign_keyset(&ks, &[(KID_A, &a), (KID_B, &b)]),
            "test",
        )
        .unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "forged signature (right kid, wrong key)",
            hint: None,
            reason: Reason::BadSignature,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| sign(Kind::Bundle, KID_A, &key(9), &bundle(6)),
        },
        Case {
            name: "one payload byte flipped",
            hint: None,
            reason: Reason::BadSignature,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                edit_envelope(&sign_bundle(&bundle(6)), |m| {
                    let mut p = unb64(m["payload"].as_str().unwrap());
                    let i = p.iter().position(|b| *b == b'A').unwrap(); // "Ana" -> "Bna"
                    p[i] = b'B';
                    m["payload"] = json!(b64(&p));
                })
            },
        },
        Case {
            name: "bundle signature replayed as a key set",
            hint: Some(Kind::Keys),
            reason: Reason::BadSignature,
            audit_kind: "keys_rejected",
            prepare: nothing,
            make: |_| {
                edit_envelope(&sign_bundle(&bundle(6)), |m| {
                    let kid = m.remove("kid").unwrap();
                    let sig = m.remove("sig").unwrap();
                    m["kind"] = json!("keys");
                    m.insert("sigs".into(), json!([{"kid": kid, "sig": sig}]));
                })
            },
        },
        Case {
            name: "bundle envelope on the keys channel",
            hint: Some(Kind::Keys),
            reason: Reason::WrongKind,
            audit_kind: "keys_rejected",
            prepare: nothing,
            make: |_| sign_bundle(&bundle(6)),
        },
        Case {
            name: "another site's bundle",
            hint: None,
            reason: Reason::WrongSite,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["site"] = json!("s-2");
                b["grants"] = json!([]);
                sign_bundle(&b)
            },
        },
        Case {
            name: "grant scoped to another site",
            hint: None,
            reason: Reason::WrongSite,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["grants"][0]["scope"] = json!({"site": "s-2"});
                sign_bundle(&b)
            },
        },
        Case {
            name: "seq rollback to a bundle never applied",
            hint: None,
            reason: Reason::Rollback,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| sign_bundle(&bundle(4)),
        },
        Case {
            name: "an older genuine bundle replayed",
            hint: None,
            reason: Reason::Replay,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| sign_bundle(&bundle(3)),
        },
        Case {
            name: "same seq with different bytes (equivocation)",
            hint: None,
            reason: Reason::Equivocation,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(5);
                b["users"][1]["active"] = json!(false);
                sign_bundle(&b)
            },
        },
        Case {
            name: "signed by a key retired by rotation",
            hint: None,
            reason: Reason::RetiredKey,
            audit_kind: "grant_rejected",
            prepare: rotate_to_b,
            make: |_| sign_bundle(&bundle(6)),
        },
        Case {
            name: "unknown kid",
            hint: None,
            reason: Reason::UnknownKey,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| sign(Kind::Bundle, "fleet-z", &key(9), &bundle(6)),
        },
        Case {
            name: "expired installer token after the clock was set back",
            hint: Some(Kind::Token),
            reason: Reason::Expired,
            audit_kind: "grant_rejected",
            // The floor is bundle 5's issue time (T0+4h); the raw clock goes back to T0+1h,
            // where the token (valid until T0+2h) would look fine.
            prepare: |fx| fx.clock.set(T0 + time::Duration::hours(1)),
            make: |_| {
                sign(
                    Kind::Token,
                    KID_A,
                    &key(1),
                    &token(T0 + time::Duration::hours(2)),
                )
            },
        },
        Case {
            name: "future-dated bundle",
            hint: None,
            reason: Reason::FutureDated,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["issued_at"] = json!(ts(issued(5) + time::Duration::minutes(5)));
                sign_bundle(&b)
            },
        },
        Case {
            name: "oversized envelope",
            hint: None,
            reason: Reason::TooLarge,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["users"][0]["name"] = json!("x".repeat(MAX_ENVELOPE_BYTES));
                sign_bundle(&b)
            },
        },
        Case {
            name: "deeply nested JSON inside a signed payload",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let payload = format!(
                    r#"{{"site":"s-1","seq":6,"issued_at":"{}","policy":{{"management":{},"features":[]}}}}"#,
                    ts(issued(5)),
                    deep(100_000)
                );
                sitegate::grants::fleet::sign(Kind::Bundle, KID_A, &key(1), payload.as_bytes())
            },
        },
        Case {
            name: "deeply nested JSON in the envelope wrapper",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                format!(
                    r#"{{"v":1,"kind":"bundle","kid":{},"payload":"","sig":""}}"#,
                    deep(100_000)
                )
                .into_bytes()
            },
        },
        Case {
            name: "duplicate grant ids",
            hint: None,
            reason: Reason::DuplicateId,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["grants"][1]["id"] = json!("g-1");
                sign_bundle(&b)
            },
        },
        Case {
            name: "duplicate user e-mail addresses",
            hint: None,
            reason: Reason::DuplicateId,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["users"][1]["email"] = json!("ANA@example.com");
                sign_bundle(&b)
            },
        },
        Case {
            name: "grant for a user not in the bundle",
            hint: None,
            reason: Reason::UnknownUser,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["grants"][1]["user"] = json!("u-404");
                sign_bundle(&b)
            },
        },
        Case {
            name: "truncated base64 signature",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                edit_envelope(&sign_bundle(&bundle(6)), |m| {
                    let s = m["sig"].as_str().unwrap().to_string();
                    m["sig"] = json!(s[..s.len() - 4]);
                })
            },
        },
        Case {
            name: "truncated base64 payload",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                edit_envelope(&sign_bundle(&bundle(6)), |m| {
                    let s = m["payload"].as_str().unwrap().to_string();
                    let mut cut = s.len() - 1;
                    while cut % 4 != 1 {
                        cut -= 1;
                    }
                    m["payload"] = json!(s[..cut]);
                })
            },
        },
        Case {
            name: "unsupported envelope version",
            hint: None,
            reason: Reason::UnsupportedVersion,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| edit_envelope(&sign_bundle(&bundle(6)), |m| m["v"] = json!(2)),
        },
        Case {
            name: "duplicate field in the envelope",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let env = String::from_utf8(sign_bundle(&bundle(6))).unwrap();
                env.replacen(
                    r#""kid":"fleet-a""#,
                    r#""kid":"fleet-a","kid":"fleet-a""#,
                    1,
                )
                .into_bytes()
            },
        },
        Case {
            name: "unknown field in a signed payload",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                b["grants"][0]["admin_everywhere"] = json!(true);
                sign_bundle(&b)
            },
        },
        Case {
            name: "password verifier with an absurd iteration count",
            hint: None,
            reason: Reason::Malformed,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                let v =
                    b["users"][0]["password"]
                        .as_str()
                        .unwrap()
                        .replacen("$1$", "$4000000000$", 1);
                b["users"][0]["password"] = json!(v);
                sign_bundle(&b)
            },
        },
        Case {
            name: "key set adding a key that did not sign it (no proof of possession)",
            hint: Some(Kind::Keys),
            reason: Reason::MissingSignature,
            audit_kind: "keys_rejected",
            prepare: nothing,
            make: |_| {
                let (a, b) = (key(1), key(2));
                sign_keyset(&keyset(1, &[(KID_A, &a), (KID_B, &b)]), &[(KID_A, &a)])
            },
        },
        Case {
            name: "key set signed only by the key it adds",
            hint: Some(Kind::Keys),
            reason: Reason::UnknownKey,
            audit_kind: "keys_rejected",
            prepare: nothing,
            make: |_| {
                let b = key(2);
                sign_keyset(&keyset(1, &[(KID_B, &b)]), &[(KID_B, &b)])
            },
        },
        Case {
            name: "key set seq rollback",
            hint: Some(Kind::Keys),
            reason: Reason::Rollback,
            audit_kind: "keys_rejected",
            prepare: |fx| {
                let (a, b) = (key(1), key(2));
                let ks = keyset(2, &[(KID_A, &a), (KID_B, &b)]);
                fx.engine
                    .apply(
                        Some(Kind::Keys),
                        &sign_keyset(&ks, &[(KID_A, &a), (KID_B, &b)]),
                        "test",
                    )
                    .unwrap();
            },
            make: |_| {
                let a = key(1);
                sign_keyset(&keyset(1, &[(KID_A, &a)]), &[(KID_A, &a)])
            },
        },
        Case {
            name: "installer token for another site",
            hint: Some(Kind::Token),
            reason: Reason::WrongSite,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut t = token(T0 + time::Duration::days(2));
                t["site"] = json!("s-2");
                t["grant"]["scope"] = json!({"unit": "gen-1"});
                sign(Kind::Token, KID_A, &key(1), &t)
            },
        },
        Case {
            name: "installer token whose grant was revoked",
            hint: Some(Kind::Token),
            reason: Reason::Revoked,
            audit_kind: "grant_rejected",
            prepare: |fx| {
                let mut b = bundle(6);
                b["revoked"] = json!(["g-0", "g-t1"]);
                fx.clock.set(issued(6));
                fx.apply(&sign_bundle(&b)).unwrap();
            },
            make: |_| {
                sign(
                    Kind::Token,
                    KID_A,
                    &key(1),
                    &token(T0 + time::Duration::days(2)),
                )
            },
        },
        Case {
            name: "more users than the limit",
            hint: None,
            reason: Reason::TooLarge,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let mut b = bundle(6);
                let users: Vec<Value> = (0..=sitegate::grants::MAX_USERS)
                    .map(|i| json!({"id": format!("u{i}"), "email": format!("{i}@x"), "active": true}))
                    .collect();
                b["users"] = json!(users);
                b["grants"] = json!([]);
                sign_bundle(&b)
            },
        },
        Case {
            name: "key set with more signatures than the limit",
            hint: Some(Kind::Keys),
            reason: Reason::TooLarge,
            audit_kind: "keys_rejected",
            prepare: nothing,
            make: |_| {
                let keys: Vec<_> = (0..=sitegate::grants::MAX_KEYS as u8)
                    .map(|i| key(100 + i))
                    .collect();
                let kids: Vec<String> = (0..keys.len()).map(|i| format!("k-{i}")).collect();
                let signers: Vec<_> = kids.iter().map(String::as_str).zip(keys.iter()).collect();
                sign_keyset(&keyset(1, &[(KID_A, &key(1))]), &signers)
            },
        },
        Case {
            name: "token signature replayed as a bundle",
            hint: Some(Kind::Bundle),
            reason: Reason::BadSignature,
            audit_kind: "grant_rejected",
            prepare: nothing,
            make: |_| {
                let env = sign(Kind::Token, KID_A, &key(1), &bundle(6));
                edit_envelope(&env, |m| m["kind"] = json!("bundle"))
            },
        },
    ]
}

#[test]
fn every_attack_is_rejected_with_its_reason_and_leaves_the_state_intact() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in cases {
        let fx = Fx::new();
        fx.apply_seq(3);
        fx.apply_seq(5);
        (case.prepare)(&fx);
        let state = fx.engine.snapshot();
        let trust = fx.engine.trust_set();
        let bytes = (case.make)(&fx);

        let err = fx
            .engine
            .apply(case.hint, &bytes, "attack")
            .expect_err(case.name);
        assert_eq!(err.reason, case.reason, "{}: {}", case.name, err.message);

        assert_eq!(
            *fx.engine.snapshot(),
            *state,
            "{}: state changed",
            case.name
        );
        assert_eq!(
            *fx.engine.trust_set(),
            *trust,
            "{}: trust changed",
            case.name
        );
        let reopened = fx.reopen();
        assert_eq!(
            *reopened.snapshot(),
            *state,
            "{}: stored state changed",
            case.name
        );
        assert_eq!(
            *reopened.trust_set(),
            *trust,
            "{}: stored trust changed",
            case.name
        );

        let rec = &fx.audit_of_kind(case.audit_kind)[0];
        assert_eq!(rec.outcome, "rejected");
        assert_eq!(
            rec.detail["reason"],
            json!(case.reason.as_str()),
            "{}",
            case.name
        );
        assert_eq!(rec.detail["source"], json!("attack"));
        let sj: Value = fx.engine.state_json();
        assert_eq!(sj["status"], json!("rejected"), "{}", case.name);
        assert_eq!(sj["rejection"]["reason"], json!(case.reason.as_str()));
        if case.reason == Reason::Equivocation {
            let alarm = &fx.audit_of_kind("alarm")[0];
            assert_eq!(alarm.detail["alarm"], json!("bundle_equivocation"));
        }
    }
}
