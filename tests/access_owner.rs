//! The access-state owner across restarts, on the real store, grants engine, owner and auth
//! service: an installer token admitted at the LAN login is kept as the signed envelope received
//! and re-verified on every start; a stored row that no longer verifies (tampered in the SQLite
//! file, signed by a key a rotation retired, or a pre-6 row kept without its envelope) is
//! dropped, audited as `token_dropped` with its reason, and grants nothing (a rotation that
//! retires the signing key drops it at once); and each kind of input of the authorization index
//! has one writer, made with the owner, never copied, and demanded by the one component the kind
//! of input belongs to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod grants_common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use grants_common::*;
use serde_json::{Value, json};
use sitegate::app::adapters::GrantsTokens;
use sitegate::audit::Audit;
use sitegate::auth::{Auth, AuthError, TokenVerifier};
use sitegate::authz::owner::{
    Access, GrantsFollower, LocalWriter, SuspensionWriter, TokenAdmission, Writers,
};
use sitegate::authz::{Decision, DenyReason, Inputs, Target};
use sitegate::business::{BusinessError, Businesses};
use sitegate::clock::SharedClock;
use sitegate::delegation::{DelegationError, Delegations};
use sitegate::grants::{GrantEngine, Kind, Reason};
use sitegate::model::{BusinessId, Capability, GrantId, SiteId, UserId};
use sitegate::store::{MIGRATIONS, Store};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 30));

fn installer() -> UserId {
    UserId::new("u-9").unwrap()
}

/// The daemon's start-up order on `engine`: the owner over what the engine re-verified, then
/// the auth service with the owner as its token verifier.
fn start(fx: &Fx, engine: GrantEngine) -> (Access, Auth) {
    let (access, writers) = Access::open(engine.clone(), SiteId::new(SITE).unwrap(), Vec::new());
    let clock: SharedClock = engine.clock();
    let audit = Audit::new(fx.store.clone(), clock.clone(), None);
    let cfg = sitegate::config::Auth {
        session_ttl: std::time::Duration::from_secs(3600),
        throttle_base: std::time::Duration::from_millis(1),
        throttle_max: std::time::Duration::from_millis(2),
        lockout_after_failures: 5,
        lockout: std::time::Duration::from_secs(600),
    };
    let verifier: Arc<dyn TokenVerifier> = Arc::new(GrantsTokens(writers.tokens));
    let auth = Auth::new(
        fx.store.clone(),
        audit,
        access.clone(),
        clock,
        cfg,
        Some(verifier),
    )
    .unwrap();
    (access, auth)
}

fn configure(access: &Access, fx: &Fx) -> Decision {
    access.decide(
        &installer(),
        Capability::Configure,
        &Target::Site,
        fx.engine.effective_now(),
    )
}

fn token_rows(store: &Store) -> Vec<(String, Vec<u8>)> {
    store
        .with_conn(|c| {
            let mut stmt =
                c.prepare("SELECT grant_id, envelope FROM grant_tokens ORDER BY grant_id")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .unwrap()
}

fn table_exists(store: &Store, name: &str) -> bool {
    store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .unwrap()
        == 1
}

fn login_token_envelope() -> Vec<u8> {
    sign(
        Kind::Token,
        KID_A,
        &key(1),
        &token(T0 + time::Duration::days(2)),
    )
}

/// The same envelope with the payload raised to `admin` and the signature left as it was.
fn raised_to_admin(env: &[u8]) -> Vec<u8> {
    edit_envelope(env, |o| {
        let payload = unb64(o["payload"].as_str().unwrap());
        let mut v: Value = serde_json::from_slice(&payload).unwrap();
        v["grant"]["role"] = json!("admin");
        o.insert(
            "payload".into(),
            json!(b64(&serde_json::to_vec(&v).unwrap())),
        );
    })
}

#[tokio::test]
async fn a_token_row_tampered_in_the_database_is_dropped_at_start_audited_and_grants_nothing() {
    let fx = Fx::new();
    let env = login_token_envelope();
    let (access, auth) = start(&fx, fx.engine.clone());
    let session = auth.login_token(&env, IP).await.unwrap();
    assert_eq!(configure(&access, &fx), Decision::Allow);
    // Kept as the bytes received, in the one table of tokens.
    assert_eq!(
        token_rows(&fx.store),
        vec![("g-t1".to_string(), env.clone())]
    );
    assert!(!table_exists(&fx.store, "token_grants"));
    drop((access, auth));

    // An untouched row re-verifies: the installer's session and grant survive a restart.
    let (access, auth) = start(&fx, fx.reopen());
    assert_eq!(
        auth.authenticate(&session.token).await.unwrap().user,
        installer()
    );
    assert_eq!(configure(&access, &fx), Decision::Allow);
    drop((access, auth));

    // Someone with write access to the SQLite file raises the token to admin.
    let tampered = raised_to_admin(&env);
    fx.store
        .with_conn(|c| {
            c.execute(
                "UPDATE grant_tokens SET envelope = ?1 WHERE grant_id = 'g-t1'",
                [&tampered],
            )?;
            Ok(())
        })
        .unwrap();
    let engine = fx.reopen();
    let (access, auth) = start(&fx, engine.clone());
    // Not in the state, not in the index: the installer is unknown, as admin or otherwise.
    assert!(engine.snapshot().grants.is_empty());
    assert!(engine.snapshot().users.is_empty());
    assert_eq!(
        configure(&access, &fx),
        Decision::Deny(DenyReason::UnknownUser)
    );
    assert_eq!(
        access.decide(
            &installer(),
            Capability::View,
            &Target::Site,
            fx.engine.effective_now()
        ),
        Decision::Deny(DenyReason::UnknownUser)
    );
    // The live session ends on its next use: 401.
    let refused = auth.authenticate(&session.token).await.unwrap_err();
    assert_eq!(refused, AuthError::UserInactive);
    assert_eq!(refused.status(), 401);
    // The row is gone, and the drop is audited with its machine-readable reason.
    assert!(token_rows(&fx.store).is_empty());
    let dropped = fx.audit_of_kind("token_dropped");
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].outcome, "rejected");
    assert_eq!(dropped[0].detail["grant"], json!("g-t1"));
    assert_eq!(dropped[0].detail["reason"], json!("bad_signature"));
    assert_eq!(
        dropped[0].detail["envelope_sha256"],
        json!(sitegate::util::sha256_hex(&tampered))
    );
    // A further restart finds nothing more to drop.
    drop((access, auth));
    let (access, _auth) = start(&fx, fx.reopen());
    assert_eq!(fx.audit_of_kind("token_dropped").len(), 1);
    assert_eq!(
        configure(&access, &fx),
        Decision::Deny(DenyReason::UnknownUser)
    );
}

fn rotate_to_key_b() -> Vec<u8> {
    let (a, b) = (key(1), key(2));
    sign_keyset(&keyset(1, &[(KID_B, &b)]), &[(KID_A, &a), (KID_B, &b)])
}

#[tokio::test]
async fn a_token_whose_signing_key_a_rotation_retires_is_dropped_at_once() {
    let fx = Fx::new();
    let (access, auth) = start(&fx, fx.engine.clone());
    let session = auth.login_token(&login_token_envelope(), IP).await.unwrap();
    assert_eq!(configure(&access, &fx), Decision::Allow);
    // The fleet rotates to key B; key A, which signed the token, is retired.
    access
        .apply(Some(Kind::Keys), &rotate_to_key_b(), "test")
        .unwrap();
    assert_eq!(
        configure(&access, &fx),
        Decision::Deny(DenyReason::UnknownUser)
    );
    assert_eq!(
        auth.authenticate(&session.token)
            .await
            .unwrap_err()
            .status(),
        401
    );
    let dropped = fx.audit_of_kind("token_dropped");
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].detail["reason"], json!("retired_key"));
    assert!(token_rows(&fx.store).is_empty());
    // A restart finds nothing more to drop.
    drop((access, auth));
    let (access, _auth) = start(&fx, fx.reopen());
    assert_eq!(fx.audit_of_kind("token_dropped").len(), 1);
    assert_eq!(
        configure(&access, &fx),
        Decision::Deny(DenyReason::UnknownUser)
    );
}

#[tokio::test]
async fn a_rotation_applied_by_the_cli_drops_the_token_row_and_the_daemon_loses_it_at_its_restart()
{
    let fx = Fx::new();
    let (access, auth) = start(&fx, fx.engine.clone());
    auth.login_token(&login_token_envelope(), IP).await.unwrap();
    // `sitegate grants apply` rotates the keys on the same database while the daemon runs: the
    // tool's engine re-verifies the stored token against the new set and drops its row.
    let tool = fx.reopen();
    tool.apply(Some(Kind::Keys), &rotate_to_key_b(), "cli")
        .unwrap();
    assert!(token_rows(&fx.store).is_empty());
    let dropped = fx.audit_of_kind("token_dropped");
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].detail["reason"], json!("retired_key"));
    // The running daemon judges by what it loaded until it restarts (as for every change the
    // CLI makes to the database); after the restart the token is gone.
    assert_eq!(configure(&access, &fx), Decision::Allow);
    drop((access, auth, tool));
    let (access, _auth) = start(&fx, fx.reopen());
    assert_eq!(
        configure(&access, &fx),
        Decision::Deny(DenyReason::UnknownUser)
    );
    assert_eq!(fx.audit_of_kind("token_dropped").len(), 1);
}

/// A database of schema 5 (both token tables), as the previous release left it.
fn old_database(dir: &Path, signed: &[u8]) {
    let conn = rusqlite::Connection::open(dir.join(sitegate::store::DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
             applied_at_ms INTEGER NOT NULL)",
    )
    .unwrap();
    for m in MIGRATIONS.iter().filter(|m| m.version <= 5) {
        conn.execute_batch(m.sql).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations(version, name, applied_at_ms) VALUES (?1, ?2, 0)",
            rusqlite::params![m.version, m.name],
        )
        .unwrap();
    }
    let admitted = sitegate::clock::unix_ms(T0);
    let expires = sitegate::clock::unix_ms(T0 + time::Duration::days(2));
    // Admitted over MQTT: the envelope.
    conn.execute(
        "INSERT INTO grant_tokens(grant_id, user_id, envelope, expires_at_ms, admitted_ms)
         VALUES ('g-t1', 'u-9', ?1, ?2, ?3)",
        rusqlite::params![signed, expires, admitted],
    )
    .unwrap();
    // Admitted at the LAN login by the previous release: decoded, without its signature.
    conn.execute(
        "INSERT INTO token_grants(grant_id, user_id, email, name, role, scope, not_before_ms,
             expires_ms, added_ms, business)
         VALUES ('g-t2', 'u-8', 'old@example.com', 'Olga', 'admin', '{\"site\":\"s-1\"}', NULL,
             ?1, ?2, NULL)",
        rusqlite::params![expires, admitted],
    )
    .unwrap();
}

#[test]
fn a_schema_5_database_keeps_its_signed_tokens_and_drops_the_unsigned_ones_at_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let signed = login_token_envelope();
    old_database(dir.path(), &signed);
    let store = Store::open_in(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 6);
    // One table: both rows in it, the old one without an envelope.
    assert!(!table_exists(&store, "token_grants"));
    assert_eq!(
        token_rows(&store),
        vec![
            ("g-t1".to_string(), signed.clone()),
            ("g-t2".to_string(), Vec::new())
        ]
    );
    let clock = sitegate::clock::ManualClock::new(T0);
    let engine = open_engine(&store, &clock, &cfg());
    let state = engine.snapshot();
    let ids: Vec<&str> = state.grants.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, vec!["g-t1"]);
    let (access, _) = Access::open(engine.clone(), SiteId::new(SITE).unwrap(), Vec::new());
    let now = engine.effective_now();
    assert_eq!(
        access.decide(&installer(), Capability::Configure, &Target::Site, now),
        Decision::Allow
    );
    assert_eq!(
        access.decide(
            &UserId::new("u-8").unwrap(),
            Capability::View,
            &Target::Site,
            now
        ),
        Decision::Deny(DenyReason::UnknownUser)
    );
    assert_eq!(token_rows(&store), vec![("g-t1".to_string(), signed)]);
    let dropped: Vec<_> = store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some("token_dropped".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].detail["grant"], json!("g-t2"));
    assert_eq!(dropped[0].detail["reason"], json!("malformed"));
}

/// Compiles only when `$t` is not `Clone`: for a `Clone` type both impls of `NotClone` apply
/// and the call is ambiguous (a compile error, so this file does not build).
macro_rules! assert_not_clone {
    ($($t:ty),+ $(,)?) => {{
        trait NotClone<A> {
            fn check() {}
        }
        impl<T: ?Sized> NotClone<()> for T {}
        struct IsClone;
        impl<T: ?Sized + Clone> NotClone<IsClone> for T {}
        $(<$t as NotClone<_>>::check();)+
    }};
}

/// `Delegations::new`: the delegation service opens only with the writer of local delegations.
type OpensDelegations = fn(
    Store,
    Audit,
    LocalWriter,
    SharedClock,
    &Path,
    Option<String>,
) -> Result<Delegations, DelegationError>;

/// `Businesses::new`: the business service opens only with the writer of suspensions.
type OpensBusinesses = fn(
    Store,
    Audit,
    SuspensionWriter,
    SharedClock,
    Option<String>,
) -> Result<Businesses, BusinessError>;

/// The structure that keeps each kind of input to one module, checked when this file compiles:
/// the writers' fields are private to `authz::owner` (nothing outside it can make one; the only
/// makers are `Access::open` and `Access::staged`, one set per owner), no writer is `Clone` (the
/// one set cannot be copied to a second component), and the component each kind of input
/// belongs to cannot be built without its writer. At run time: a writer changes the owner that
/// made it and no other one.
#[test]
fn each_kind_of_input_has_one_writer_made_with_its_owner_and_demanded_by_its_component() {
    assert_not_clone!(
        Writers,
        LocalWriter,
        SuspensionWriter,
        TokenAdmission,
        GrantsFollower
    );
    let _: OpensDelegations = Delegations::new;
    let _: OpensBusinesses = Businesses::new;
    let _: fn(TokenAdmission) -> GrantsTokens = GrantsTokens;

    let site = || Inputs {
        site: Some(SiteId::new(SITE).unwrap()),
        ..Inputs::default()
    };
    let (a, a_writers, _) = Access::staged(site());
    let (b, _b_writers, _) = Access::staged(site());
    let acme = BusinessId::new("acme").unwrap();
    assert!(
        a_writers
            .suspensions
            .set_suspended(vec![(acme.clone(), Vec::new())])
    );
    assert!(a.index().business_suspended(&acme));
    assert!(!b.index().business_suspended(&acme));
    let revoked = GrantId::new("g-local").unwrap();
    a_writers
        .local
        .set_local(Vec::new(), HashSet::from([revoked.clone()]));
    assert!(a.index().is_revoked(&revoked));
    assert!(!b.index().is_revoked(&revoked));
    // An owner without an engine has nothing to follow or admit with.
    assert!(!a_writers.follower.sync_grants());
    let refused = a_writers.tokens.admit_login_token(b"{}").unwrap_err();
    assert_eq!(refused.reason, Reason::Storage);
    assert_eq!(refused.message, "no grants engine on this box");
}

/// The daemon's owner, and with it the one set of writers the daemon moves into its components,
/// is made in one place: the wiring in `app`. Owners without an engine (`Access::new`,
/// `Access::staged`) are for tools and tests and are never made by `src/` code. Only code is
/// read: comments and test code may name them.
#[test]
fn the_daemons_owner_and_its_writers_are_made_only_by_the_wiring() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    assert!(files.len() > 20);
    // (constructor, the files allowed to call it outside test code)
    let rules: &[(&str, &[&str])] = &[
        ("Access::open(", &["app/mod.rs"]),
        ("Access::staged(", &[]),
        ("Access::new(", &[]),
    ];
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Test code at the end of a file (`#[cfg(test)] mod tests { … }`) may make any owner.
        let code = match text.find("#[cfg(test)]\nmod tests {") {
            Some(i) => &text[..i],
            None => &text,
        };
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (call, _) in rules {
                if line.contains(call) {
                    found.push((rel.clone(), *call));
                }
            }
        }
    }
    let wrong: Vec<_> = found
        .iter()
        .filter(|(rel, call)| {
            !rules
                .iter()
                .any(|(c, allowed)| c == call && allowed.contains(&rel.as_str()))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "access-state owners made outside the wiring: {wrong:?} (docs/authorization.md, \
         \"One owner of access state\")"
    );
    // The wiring makes exactly one.
    assert_eq!(found, vec![("app/mod.rs".to_string(), "Access::open(")]);
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}
