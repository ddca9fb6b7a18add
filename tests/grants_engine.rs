//! The grant engine against a real SQLite database: apply, idempotence, revocation, restart,
//! clock policy, key rotation, installer tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

mod grants_common;

use std::collections::BTreeMap;

use grants_common::*;
use serde_json::json;
use sitegate::access::Origin;
use sitegate::grants::{ApplyOutcome, Kind, Reason};
use sitegate::model::{GrantId, Role};

fn gid(s: &str) -> GrantId {
    GrantId::new(s).unwrap()
}

#[test]
fn a_bundle_is_applied_and_published_once_on_the_watch_channel() {
    let fx = Fx::new();
    let mut rx = fx.engine.subscribe();
    assert_eq!(fx.engine.snapshot().seq, 0);
    assert!(fx.engine.snapshot().grants.is_empty());
    fx.clock.set(issued(1));
    let out = fx.apply(&sign_bundle(&bundle(1))).unwrap();
    assert_eq!(out, ApplyOutcome::Applied { seq: 1 });
    assert!(rx.has_changed().unwrap());
    let s = rx.borrow_and_update().clone();
    assert_eq!(s.seq, 1);
    assert_eq!(s.users.len(), 2);
    assert_eq!(s.grants.len(), 3);
    assert!(s.grants.iter().all(|g| g.origin == Origin::Cloud));
    assert!(s.revoked.contains(&gid("g-0")));
    assert_eq!(s.issued_at, Some(issued(1)));
    assert_eq!(s.last_trusted_time, Some(issued(1)));
    let mut max = BTreeMap::new();
    max.insert(Role::Technician, time::Duration::days(30));
    max.insert(Role::Admin, time::Duration::days(30));
    assert_eq!(s.policy.max_offline, max);
    assert_eq!(fx.engine.snapshot(), s);
    let applied = fx.audit_of_kind("grants_applied");
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].detail["seq"], json!(1));
    let sj = fx.engine.state_json();
    assert_eq!(sj["status"], json!("applied"));
    assert_eq!(sj["seq"], json!(1));
}

#[test]
fn a_redelivered_bundle_is_a_no_op() {
    let fx = Fx::new();
    fx.apply_seq(1);
    let mut rx = fx.engine.subscribe();
    rx.borrow_and_update();
    let env = sign_bundle(&bundle(1));
    for _ in 0..3 {
        assert_eq!(fx.apply(&env).unwrap(), ApplyOutcome::Duplicate { seq: 1 });
    }
    // Same payload under a different envelope encoding (field order) is still the same bundle.
    let reordered = edit_envelope(&env, |_| {});
    assert_eq!(
        fx.apply(&reordered).unwrap(),
        ApplyOutcome::Duplicate { seq: 1 }
    );
    assert!(!rx.has_changed().unwrap());
    assert_eq!(fx.audit_of_kind("grants_applied").len(), 1);
    assert!(fx.audit_of_kind("grant_rejected").is_empty());
}

#[test]
fn a_revocation_stays_when_a_later_bundle_omits_it_and_reinstates_the_grant() {
    let fx = Fx::new();
    let mut b = bundle(1);
    b["revoked"] = json!(["g-2"]);
    fx.apply(&sign_bundle(&b)).unwrap();
    let s = fx.engine.snapshot();
    assert!(s.revoked.contains(&gid("g-2")));
    assert!(!s.grants.iter().any(|g| g.id == gid("g-2")));
    // Bundle 2 lists g-2 as a grant again and no longer revokes it.
    fx.clock.set(issued(2));
    fx.apply(&sign_bundle(&bundle(2))).unwrap();
    let s = fx.engine.snapshot();
    assert!(s.revoked.contains(&gid("g-2")));
    assert!(!s.grants.iter().any(|g| g.id == gid("g-2")));
    assert!(fx.reopen().snapshot().revoked.contains(&gid("g-2")));
}

#[test]
fn a_restart_reloads_and_reverifies_the_stored_bundle() {
    let fx = Fx::new();
    fx.apply_seq(1);
    fx.apply_seq(2);
    let before = fx.engine.snapshot();
    let again = fx.reopen();
    assert_eq!(*again.snapshot(), *before);
    // After the restart, redelivery is still a no-op and an older one still a replay.
    assert_eq!(
        again.apply(None, &sign_bundle(&bundle(2)), "t").unwrap(),
        ApplyOutcome::Duplicate { seq: 2 }
    );
    assert_eq!(
        again
            .apply(None, &sign_bundle(&bundle(1)), "t")
            .unwrap_err()
            .reason,
        Reason::Replay
    );
}

#[test]
fn a_tampered_stored_bundle_is_withheld_until_a_valid_one_arrives() {
    let fx = Fx::new();
    fx.apply_seq(1);
    // Flip a byte of the stored envelope's payload inside the database.
    fx.store
        .with_conn(|c| {
            let env: Vec<u8> =
                c.query_row("SELECT envelope FROM grant_bundle WHERE id = 1", [], |r| {
                    r.get(0)
                })?;
            let bad = edit_envelope(&env, |m| {
                let mut p = unb64(m["payload"].as_str().unwrap());
                let i = p.iter().position(|b| *b == b'v').unwrap();
                p[i] = b'w';
                m["payload"] = json!(b64(&p));
            });
            c.execute("UPDATE grant_bundle SET envelope = ?1", [bad])?;
            Ok(())
        })
        .unwrap();
    let again = fx.reopen();
    let s = again.snapshot();
    assert_eq!(s.seq, 1, "the seq floor still guards against rollback");
    assert!(s.grants.is_empty() && s.users.is_empty());
    let alarms = fx.audit_of_kind("alarm");
    assert_eq!(alarms[0].detail["alarm"], json!("grant_store_invalid"));
    // Redelivery of the genuine bundle restores it; an older one is still refused.
    assert_eq!(
        again.apply(None, &sign_bundle(&bundle(1)), "t").unwrap(),
        ApplyOutcome::Applied { seq: 1 }
    );
    assert_eq!(again.snapshot().grants.len(), 3);
}

#[test]
fn the_clock_floor_moves_only_forward_and_only_with_signed_time() {
    let fx = Fx::new();
    fx.apply_seq(5);
    assert_eq!(fx.engine.snapshot().last_trusted_time, Some(issued(5)));
    // An unsigned clock jump forward does not move the floor.
    fx.clock.set(issued(5) + time::Duration::days(400));
    assert_eq!(fx.engine.snapshot().last_trusted_time, Some(issued(5)));
    // Setting the clock back: expiry is still judged at the floor.
    fx.clock.set(T0 - time::Duration::days(300));
    assert_eq!(fx.engine.effective_now(), issued(5));
    assert!(fx.engine.check_clock());
    let ev = fx.audit_of_kind("clock_rollback");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].detail["last_trusted_time"], json!(ts(issued(5))));
    // Raised once per episode, not on every check.
    assert!(fx.engine.check_clock());
    assert_eq!(fx.audit_of_kind("clock_rollback").len(), 1);
    // A newer bundle issued *before* the floor (cloud clock skew) applies but the floor stays.
    fx.clock.set(issued(5));
    let mut b = bundle(6);
    b["issued_at"] = json!(ts(issued(4)));
    fx.apply(&sign_bundle(&b)).unwrap();
    assert_eq!(fx.engine.snapshot().last_trusted_time, Some(issued(5)));
    assert_eq!(fx.engine.snapshot().issued_at, Some(issued(4)));
    // A bundle within the future skew is accepted and moves the floor past the clock.
    let mut b = bundle(7);
    b["issued_at"] = json!(ts(issued(5) + time::Duration::seconds(50)));
    fx.apply(&sign_bundle(&b)).unwrap();
    assert_eq!(
        fx.engine.snapshot().last_trusted_time,
        Some(issued(5) + time::Duration::seconds(50))
    );
    assert_eq!(
        fx.reopen().snapshot().last_trusted_time,
        Some(issued(5) + time::Duration::seconds(50))
    );
}

#[test]
fn a_key_rotation_with_proof_of_possession_replaces_the_trusted_set() {
    let fx = Fx::new();
    fx.apply_seq(1);
    let (a, b) = (key(1), key(2));
    let ks = keyset(1, &[(KID_B, &b)]);
    let env = sign_keyset(&ks, &[(KID_A, &a), (KID_B, &b)]);
    assert_eq!(
        fx.engine.apply(Some(Kind::Keys), &env, "t").unwrap(),
        ApplyOutcome::KeysApplied { seq: 1 }
    );
    assert_eq!(
        fx.engine.apply(Some(Kind::Keys), &env, "t").unwrap(),
        ApplyOutcome::KeysDuplicate { seq: 1 }
    );
    let t = fx.engine.trust_set();
    assert_eq!(t.seq, 1);
    assert!(t.keys[KID_A].retired_at.is_some());
    assert!(t.keys[KID_B].retired_at.is_none());
    // The new key signs bundles now; the old one is refused.
    fx.clock.set(issued(2));
    fx.apply(&sign(Kind::Bundle, KID_B, &b, &bundle(2)))
        .unwrap();
    assert_eq!(
        fx.apply(&sign_bundle(&bundle(3))).unwrap_err().reason,
        Reason::RetiredKey
    );
    // A retired key cannot come back, not even signed by the current key.
    let back = sign_keyset(
        &keyset(2, &[(KID_A, &a), (KID_B, &b)]),
        &[(KID_B, &b), (KID_A, &a)],
    );
    assert_eq!(
        fx.engine
            .apply(Some(Kind::Keys), &back, "t")
            .unwrap_err()
            .reason,
        Reason::RetiredKey
    );
    // Across a restart the config's key stays retired (a rotation supersedes the config).
    let again = fx.reopen();
    assert_eq!(*again.trust_set(), *fx.engine.trust_set());
    assert_eq!(
        again
            .apply(None, &sign_bundle(&bundle(3)), "t")
            .unwrap_err()
            .reason,
        Reason::RetiredKey
    );
    assert_eq!(again.snapshot().seq, 2);
    assert_eq!(fx.audit_of_kind("keys_applied").len(), 1);
}

#[test]
fn a_key_past_its_not_after_is_refused_even_with_the_clock_set_back() {
    let fx = Fx::new();
    let (a, b) = (key(1), key(2));
    let ks = json!({"seq": 1, "issued_at": ts(T0), "keys": [
        {"kid": KID_A, "public_key": sitegate::grants::fleet::public_key_b64(&a),
         "not_after": ts(issued(3))},
        {"kid": KID_B, "public_key": sitegate::grants::fleet::public_key_b64(&b)}
    ]});
    fx.engine
        .apply(
            Some(Kind::Keys),
            &sign_keyset(&ks, &[(KID_A, &a), (KID_B, &b)]),
            "t",
        )
        .unwrap();
    fx.clock.set(issued(2));
    fx.apply(&sign_bundle(&bundle(2))).unwrap();
    fx.clock.set(issued(3));
    fx.apply(&sign(Kind::Bundle, KID_B, &b, &bundle(3)))
        .unwrap();
    fx.clock.set(issued(1));
    assert_eq!(
        fx.apply(&sign_bundle(&bundle(4))).unwrap_err().reason,
        Reason::RetiredKey
    );
}

#[test]
fn an_installer_token_works_on_a_box_that_never_had_a_bundle() {
    let fx = Fx::new();
    let env = sign(
        Kind::Token,
        KID_A,
        &key(1),
        &token(T0 + time::Duration::days(2)),
    );
    let t = fx.engine.verify_token(&env).unwrap();
    assert_eq!(t.user.email, "installer@example.com");
    assert_eq!(t.grant.role, Role::Technician);
    assert!(
        fx.engine.snapshot().grants.is_empty(),
        "verify does not change state"
    );
    assert_eq!(
        fx.engine.apply(Some(Kind::Token), &env, "t").unwrap(),
        ApplyOutcome::TokenAdmitted { grant: gid("g-t1") }
    );
    let s = fx.engine.snapshot();
    assert_eq!(s.grants.len(), 1);
    assert_eq!(s.grants[0].origin, Origin::Token);
    assert_eq!(*fx.reopen().snapshot(), *s);
    // A bundle keeps the token grant until it revokes it.
    fx.clock.set(issued(1));
    fx.apply(&sign_bundle(&bundle(1))).unwrap();
    assert!(
        fx.engine
            .snapshot()
            .grants
            .iter()
            .any(|g| g.id == gid("g-t1"))
    );
    let mut b = bundle(2);
    b["revoked"] = json!(["g-t1"]);
    fx.clock.set(issued(2));
    fx.apply(&sign_bundle(&b)).unwrap();
    assert!(
        !fx.engine
            .snapshot()
            .grants
            .iter()
            .any(|g| g.id == gid("g-t1"))
    );
    assert!(
        !fx.engine
            .snapshot()
            .users
            .iter()
            .any(|u| u.id.as_str() == "u-9")
    );
    assert_eq!(
        fx.engine.verify_token(&env).unwrap_err().reason,
        Reason::Revoked
    );
}

#[test]
fn config_keys_seed_the_trust_set_and_trust_import_adds_but_never_replaces() {
    use sitegate::grants::trust;
    let fx = Fx::new();
    assert_eq!(fx.engine.trust_set().keys[KID_A].source, "config");
    let b = key(2);
    let file = json!({"keys": [{"kid": KID_B, "public_key": sitegate::grants::fleet::public_key_b64(&b)}]});
    let keys = trust::parse_import_file(&serde_json::to_vec(&file).unwrap()).unwrap();
    let added = fx
        .store
        .with_conn(|c| Ok(trust::import(c, &keys, T0).unwrap()))
        .unwrap();
    assert_eq!(added, 1);
    let again = fx.reopen();
    assert_eq!(again.trust_set().keys[KID_B].source, "import");
    again
        .apply(None, &sign(Kind::Bundle, KID_B, &b, &bundle(1)), "t")
        .unwrap();
    // Another public key under a trusted kid is refused.
    let evil =
        json!({"kid": KID_A, "public_key": sitegate::grants::fleet::public_key_b64(&key(9))});
    let keys = trust::parse_import_file(&serde_json::to_vec(&evil).unwrap()).unwrap();
    let err = fx
        .store
        .with_conn(|c| Ok(trust::import(c, &keys, T0)))
        .unwrap();
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("different public key")
    );
}

#[test]
fn a_bundle_with_many_grants_round_trips_through_the_mirror_tables() {
    let fx = Fx::new();
    let mut b = bundle(1);
    let grants: Vec<_> = (0..500)
        .map(|i| json!({"id": format!("g-{i}"), "user": "u-2", "role": "viewer", "scope": {"unit": format!("hvac-{i}")}}))
        .collect();
    b["grants"] = json!(grants);
    fx.apply(&sign_bundle(&b)).unwrap();
    let n: i64 = fx
        .store
        .with_conn(|c| Ok(c.query_row("SELECT COUNT(*) FROM grant_grants", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(
        n, 500,
        "the mirror holds the grants as sent, revoked ones included"
    );
    // The published state leaves the revoked one (g-0) out.
    assert_eq!(fx.engine.snapshot().grants.len(), 499);
}

#[test]
fn retained_envelopes_signed_by_a_since_retired_key_are_duplicates_not_attacks() {
    let fx = Fx::new();
    fx.apply_seq(1);
    let (a, b) = (key(1), key(2));
    let keys_env = sign_keyset(&keyset(1, &[(KID_B, &b)]), &[(KID_A, &a), (KID_B, &b)]);
    fx.engine.apply(Some(Kind::Keys), &keys_env, "t").unwrap();
    // The broker redelivers both retained messages on reconnect.
    assert_eq!(
        fx.apply(&sign_bundle(&bundle(1))).unwrap(),
        ApplyOutcome::Duplicate { seq: 1 }
    );
    assert_eq!(
        fx.engine.apply(Some(Kind::Keys), &keys_env, "t").unwrap(),
        ApplyOutcome::KeysDuplicate { seq: 1 }
    );
    assert!(fx.audit_of_kind("grant_rejected").is_empty());
    assert!(fx.audit_of_kind("keys_rejected").is_empty());
    // And after a restart, the stored bundle (signed by the retired key) still loads.
    assert_eq!(fx.reopen().snapshot().grants.len(), 3);
}

#[test]
fn a_token_user_sharing_a_bundle_users_email_is_left_out() {
    let fx = Fx::new();
    fx.apply_seq(1);
    let mut t = token(T0 + time::Duration::days(1));
    t["user"]["email"] = json!("ana@example.com");
    fx.engine
        .apply(
            Some(Kind::Token),
            &sign(Kind::Token, KID_A, &key(1), &t),
            "t",
        )
        .unwrap();
    let s = fx.engine.snapshot();
    assert!(!s.users.iter().any(|u| u.id.as_str() == "u-9"));
    assert!(!s.grants.iter().any(|g| g.id == gid("g-t1")));
}

#[test]
fn rejection_messages_never_carry_long_attacker_text() {
    let fx = Fx::new();
    let field = "x".repeat(100_000);
    let env = format!(r#"{{"v":1,"kind":"bundle","{field}":1}}"#);
    let err = fx.apply(env.as_bytes()).unwrap_err();
    assert_eq!(err.reason, Reason::Malformed);
    assert!(err.message.len() <= sitegate::grants::Rejection::MAX_MESSAGE + 3);
}

#[test]
fn a_stale_engine_never_moves_the_stored_seq_back() {
    // Two engines on one database, as when `sitegate grants apply` runs beside the daemon.
    let fx = Fx::new();
    fx.apply_seq(1);
    let other = fx.reopen();
    fx.clock.set(issued(3));
    other.apply(None, &sign_bundle(&bundle(3)), "tool").unwrap();
    let err = fx.apply(&sign_bundle(&bundle(2))).unwrap_err();
    assert_eq!(err.reason, Reason::Rollback);
    assert_eq!(fx.reopen().snapshot().seq, 3);
}
