//! Login, sessions and throttling against a real SQLite file.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::Duration;

use super::*;
use crate::access::AccessState;
use crate::authz::tests::{NOW, grant, inputs, s_site, s_unit, state, uid, unit};
use crate::authz::{Decision, DenyReason, Target};
use crate::clock::{Clock, ManualClock};
use crate::model::{GrantId, Role};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 21));

fn cfg() -> crate::config::Auth {
    crate::config::Auth {
        session_ttl: StdDuration::from_secs(3600),
        throttle_base: StdDuration::from_millis(500),
        throttle_max: StdDuration::from_secs(4),
        lockout_after_failures: 5,
        lockout: StdDuration::from_secs(600),
    }
}

fn access() -> AccessState {
    let mut st = state(
        &["ana", "bob", "adm"],
        vec![
            grant("g1", "ana", Role::ControlOnly, s_unit("a1")),
            grant("g2", "bob", Role::Viewer, s_site()),
            grant("g3", "adm", Role::Admin, s_site()),
        ],
    );
    for u in &mut st.users {
        u.email = format!("{}@Example.com", u.id);
        // A fixed salt: the same bundle carries the same verifier (a changed one ends sessions).
        u.password = Some(
            crate::grants::password::hash_password_with_salt(
                format!("pw-{}", u.id).as_bytes(),
                1000,
                &[7; 16],
            )
            .unwrap(),
        );
    }
    st
}

struct Env {
    clock: ManualClock,
    authz: crate::authz::owner::Access,
    auth: Auth,
    store: Store,
}

fn open(dir: &Path, st: AccessState, tokens: Option<Arc<FixedToken>>) -> Env {
    let clock = ManualClock::new(NOW);
    let shared: SharedClock = Arc::new(clock.clone());
    let store = Store::open_in(dir).unwrap();
    let audit = Audit::new(store.clone(), shared.clone(), None);
    let authz = crate::authz::owner::Access::new(inputs(st, vec![]));
    if let Some(t) = &tokens {
        let _ = t.owner.set(authz.clone());
    }
    let tokens = tokens.map(|t| t as Arc<dyn TokenVerifier>);
    let auth = Auth::new(store.clone(), audit, authz.clone(), shared, cfg(), tokens).unwrap();
    Env {
        clock,
        authz,
        auth,
        store,
    }
}

fn audit_rows(store: &Store) -> Vec<crate::audit::Record> {
    store
        .with_conn(|c| {
            crate::audit::query(
                c,
                &crate::audit::Query {
                    limit: 1000,
                    ..Default::default()
                },
            )
        })
        .unwrap()
}

#[tokio::test]
async fn password_login_is_case_insensitive_and_opens_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let s = e
        .auth
        .login_password("  ANA@example.COM ", "pw-ana", IP)
        .await
        .unwrap();
    assert_eq!(s.token.len(), 43);
    let info = e.auth.authenticate(&s.token).await.unwrap();
    assert_eq!(info.user, uid("ana"));
    assert_eq!(info.method, Method::Password);
    assert_eq!(info.expires, NOW + Duration::hours(1));
    // Only the hash is stored.
    let stored: String = e
        .store
        .with_conn(|c| Ok(c.query_row("SELECT token_hash FROM sessions", [], |r| r.get(0))?))
        .unwrap();
    assert_ne!(stored, s.token);
    assert_eq!(stored, crate::util::sha256_hex(s.token.as_bytes()));
    let rec = &audit_rows(&e.store)[0];
    assert_eq!((rec.kind.as_str(), rec.outcome.as_str()), ("login", "ok"));
    assert_eq!(rec.actor.as_deref(), Some("ana"));
}

#[tokio::test]
async fn wrong_password_and_unknown_email_fail_alike_and_never_audit_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let a = e
        .auth
        .login_password("ana@example.com", "secret-guess-1", IP)
        .await
        .unwrap_err();
    e.clock.advance(Duration::minutes(1));
    let b = e
        .auth
        .login_password("nobody@example.com", "secret-guess-2", IP2)
        .await
        .unwrap_err();
    assert_eq!(a, AuthError::InvalidCredentials);
    assert_eq!(a, b);
    assert_eq!(a.to_string(), b.to_string());
    let rows = audit_rows(&e.store);
    let all = serde_json::to_string(&rows).unwrap();
    assert!(
        !all.contains("secret-guess"),
        "a password reached the audit log"
    );
    assert!(
        !all.contains("nobody@example.com"),
        "an attempted email reached the audit log"
    );
    let unknown = rows
        .iter()
        .find(|r| r.detail["reason"] == "unknown_account")
        .unwrap();
    assert_eq!(
        unknown.actor.as_deref(),
        Some(email_key("nobody@example.com").as_str())
    );
    assert_eq!(unknown.outcome, "failed");
    let wrong = rows
        .iter()
        .find(|r| r.detail["reason"] == "wrong_password")
        .unwrap();
    assert_eq!(wrong.actor.as_deref(), Some("ana"));
}

#[tokio::test]
async fn a_deactivated_or_passwordless_account_cannot_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = access();
    st.users[0].active = false;
    st.users[1].password = None;
    let e = open(dir.path(), st, None);
    assert_eq!(
        e.auth.login_password("ana@example.com", "pw-ana", IP).await,
        Err(AuthError::InvalidCredentials)
    );
    e.clock.advance(Duration::minutes(1));
    assert_eq!(
        e.auth.login_password("bob@example.com", "", IP2).await,
        Err(AuthError::InvalidCredentials)
    );
}

#[tokio::test]
async fn failed_logins_are_delayed_exponentially_per_account_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let mut delays = Vec::new();
    for i in 0..4 {
        // A fresh client address each time, so only the account counter applies.
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1));
        assert_eq!(
            e.auth.login_password("bob@example.com", "wrong", ip).await,
            Err(AuthError::InvalidCredentials)
        );
        let ip2 = IpAddr::V4(Ipv4Addr::new(10, 0, 1, i + 1));
        match e
            .auth
            .login_password("bob@example.com", "pw-bob", ip2)
            .await
        {
            Err(AuthError::Throttled { retry_after }) => delays.push(retry_after),
            other => panic!("expected a throttle, got {other:?}"),
        }
        e.clock.advance(Duration::seconds(10));
    }
    assert_eq!(
        delays,
        [500u64, 1000, 2000, 4000]
            .map(StdDuration::from_millis)
            .to_vec()
    );
    // After the delay the right password works and clears the account counter.
    e.auth
        .login_password("bob@example.com", "pw-bob", IP)
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_logins_are_delayed_per_client_address_across_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let _ = e.auth.login_password("x1@example.com", "a", IP).await;
    let r = e.auth.login_password("ana@example.com", "pw-ana", IP).await;
    assert!(matches!(r, Err(AuthError::Throttled { .. })), "{r:?}");
    // Another client is not affected.
    e.auth
        .login_password("ana@example.com", "pw-ana", IP2)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_account_locks_after_repeated_failures_and_an_admin_can_see_and_clear_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    for i in 0..5u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1));
        let _ = e.auth.login_password("ana@example.com", "nope", ip).await;
        e.clock.advance(Duration::seconds(5));
    }
    let r = e.auth.login_password("ana@example.com", "pw-ana", IP).await;
    assert!(matches!(r, Err(AuthError::Locked { .. })), "{r:?}");
    let rows = audit_rows(&e.store);
    assert!(
        rows.iter()
            .any(|r| r.kind == "login" && r.outcome == "locked")
    );
    // Only an admin may list lockouts.
    assert_eq!(
        e.auth.lockouts(&uid("bob")).await,
        Err(AuthError::Forbidden)
    );
    let list = e.auth.lockouts(&uid("adm")).await.unwrap();
    let ana = list.iter().find(|l| l.label == "ana@example.com").unwrap();
    assert!(ana.locked_until.is_some());
    assert_eq!(ana.failures, 5);
    e.auth.clear_lockout(&uid("adm"), &ana.key).await.unwrap();
    e.auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    assert!(matches!(
        e.auth.clear_lockout(&uid("adm"), &ana.key).await,
        Err(AuthError::NoSuchLockout(_))
    ));
}

#[tokio::test]
async fn lockouts_are_for_site_admins_and_the_owner_not_for_a_site_technician() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = access();
    st.users.push(crate::authz::tests::user("tech"));
    st.grants
        .push(grant("g4", "tech", Role::Technician, s_site()));
    // bob (a site viewer) is the site owner.
    st.users[1].owner = true;
    let e = open(dir.path(), st, None);
    // The technician role holds `manage_users` on the site...
    assert!(
        e.authz
            .decide(&uid("tech"), Capability::ManageUsers, &Target::Site, NOW)
            .is_allow()
    );
    // ...but lifting a brute-force protection is an admin's act.
    assert_eq!(
        e.auth.lockouts(&uid("tech")).await,
        Err(AuthError::Forbidden)
    );
    assert_eq!(
        e.auth.clear_lockout(&uid("tech"), "email:0").await,
        Err(AuthError::Forbidden)
    );
    assert_eq!(AuthError::Forbidden.status(), 403);
    assert_eq!(e.auth.lockouts(&uid("adm")).await, Ok(Vec::new()));
    assert_eq!(e.auth.lockouts(&uid("bob")).await, Ok(Vec::new()));
    assert!(matches!(
        e.auth.clear_lockout(&uid("bob"), "email:0").await,
        Err(AuthError::NoSuchLockout(_))
    ));
    assert_eq!(
        e.auth.lockouts(&uid("ana")).await,
        Err(AuthError::Forbidden)
    );
}

#[tokio::test]
async fn a_lockout_ends_by_itself_after_the_lockout_period() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    for i in 0..5u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1));
        let _ = e.auth.login_password("ana@example.com", "nope", ip).await;
        e.clock.advance(Duration::seconds(5));
    }
    assert!(matches!(
        e.auth.login_password("ana@example.com", "pw-ana", IP).await,
        Err(AuthError::Locked { .. })
    ));
    e.clock.advance(Duration::minutes(11));
    e.auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_survive_a_restart_and_logout_revokes_them() {
    let dir = tempfile::tempdir().unwrap();
    let token = {
        let e = open(dir.path(), access(), None);
        e.auth
            .login_password("ana@example.com", "pw-ana", IP)
            .await
            .unwrap()
            .token
    };
    let e = open(dir.path(), access(), None);
    assert_eq!(e.auth.authenticate(&token).await.unwrap().user, uid("ana"));
    e.auth.logout(&token).await.unwrap();
    assert_eq!(
        e.auth.authenticate(&token).await,
        Err(AuthError::Unauthenticated)
    );
    assert_eq!(e.auth.logout(&token).await, Err(AuthError::Unauthenticated));
    assert!(audit_rows(&e.store).iter().any(|r| r.kind == "logout"));
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let s = e
        .auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    e.clock.advance(Duration::minutes(59));
    e.auth.authenticate(&s.token).await.unwrap();
    e.clock.advance(Duration::minutes(1));
    assert_eq!(
        e.auth.authenticate(&s.token).await,
        Err(AuthError::SessionExpired)
    );
    // And it is gone for good, even if the clock is set back.
    e.clock.set(NOW);
    assert_eq!(
        e.auth.authenticate(&s.token).await,
        Err(AuthError::Unauthenticated)
    );
}

#[tokio::test]
async fn malformed_and_unknown_bearers_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    for bad in [
        "",
        "x",
        "not base64 at all!!!!!!!!!!!!!!!!!!!!!!!!!!",
        &"A".repeat(43),
        &"A".repeat(10_000),
    ] {
        assert_eq!(
            e.auth.authenticate(bad).await,
            Err(AuthError::Unauthenticated),
            "{bad:.20}"
        );
    }
}

#[tokio::test]
async fn revocation_mid_session_denies_the_next_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let s = e
        .auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    let a1 = Target::Unit(unit("a1"));
    let who = e.auth.authenticate(&s.token).await.unwrap().user;
    assert!(
        e.authz
            .decide(&who, Capability::Control, &a1, NOW)
            .is_allow()
    );
    // The cloud revokes g1.
    let mut st = access();
    st.seq = 2;
    st.revoked.insert(GrantId::new("g1").unwrap());
    e.authz.set_state(Arc::new(st));
    let who = e.auth.authenticate(&s.token).await.unwrap().user;
    assert_eq!(
        e.authz.decide(&who, Capability::Control, &a1, NOW),
        Decision::Deny(DenyReason::Revoked)
    );
    // The cloud deactivates the account: the session itself ends.
    let mut st = access();
    st.seq = 3;
    st.users[0].active = false;
    e.authz.set_state(Arc::new(st));
    assert_eq!(
        e.auth.authenticate(&s.token).await,
        Err(AuthError::UserInactive)
    );
}

/// A verifier that accepts the envelope `good` as the given user and grant; admitting it puts
/// them into the access state through the owner, as the grants engine does.
struct FixedToken {
    token: Result<(User, Grant), String>,
    owner: std::sync::OnceLock<crate::authz::owner::Access>,
}

#[allow(non_snake_case, reason = "reads like the tuple struct it replaced")]
fn FixedToken(token: Result<(User, Grant), String>) -> FixedToken {
    FixedToken {
        token,
        owner: std::sync::OnceLock::new(),
    }
}

impl TokenVerifier for FixedToken {
    fn verify(&self, envelope: &[u8]) -> Result<(User, Grant), String> {
        if envelope == b"good" {
            self.token.clone()
        } else {
            Err("signature does not verify".into())
        }
    }

    fn admit(&self, envelope: &[u8]) -> Result<(User, Grant), String> {
        let (mut user, mut grant) = self.verify(envelope)?;
        user.email = user.email.to_lowercase();
        grant.origin = Origin::Token;
        let owner = self.owner.get().ok_or("no owner")?;
        let (u, g) = (user.clone(), grant.clone());
        owner.update(|i| {
            let mut st = (*i.state).clone();
            st.users.push(u);
            st.grants.push(g);
            i.state = Arc::new(st);
        });
        Ok((user, grant))
    }
}

fn installer(exp: Duration) -> (User, Grant) {
    let u = User {
        id: uid("inst"),
        email: "Inst@Example.com".into(),
        name: "Installer".into(),
        active: true,
        password: None,
        business: None,
        owner: false,
    };
    let mut g = grant("t-1", "inst", Role::Technician, s_site());
    g.origin = Origin::Cloud; // login_token forces Token
    g.expires_at = Some(NOW + exp);
    (u, g)
}

#[tokio::test]
async fn an_installer_token_logs_in_and_its_grant_lives_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = Arc::new(FixedToken(Ok(installer(Duration::hours(2)))));
    {
        let e = open(dir.path(), access(), Some(verifier));
        let s = e.auth.login_token(b"good", IP).await.unwrap();
        assert_eq!(s.info.method, Method::Token);
        // Session cannot outlive the token's grant (ttl 1 h < 2 h here, so ttl applies).
        assert_eq!(s.info.expires, NOW + Duration::hours(1));
        assert!(
            e.authz
                .decide(
                    &uid("inst"),
                    Capability::Configure,
                    &Target::Unit(unit("b1")),
                    NOW
                )
                .is_allow()
        );
        assert_eq!(
            e.authz
                .index()
                .grant(&GrantId::new("t-1").unwrap())
                .unwrap()
                .origin,
            Origin::Token
        );
        assert_eq!(
            e.auth.authenticate(&s.token).await.unwrap().user,
            uid("inst")
        );
        // Past expiry the grant stops working. (Keeping the token across restarts, re-verified,
        // is the grants engine's: see `tests/access_owner.rs`.)
        e.clock.advance(Duration::hours(3));
        assert_eq!(
            e.authz
                .decide(&uid("inst"), Capability::View, &Target::Site, e.clock.now()),
            Decision::Deny(DenyReason::Expired)
        );
    }
}

#[tokio::test]
async fn bad_expired_or_revoked_installer_tokens_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(
        dir.path(),
        access(),
        Some(Arc::new(FixedToken(Ok(installer(Duration::hours(-1)))))),
    );
    assert!(matches!(
        e.auth.login_token(b"tampered", IP).await,
        Err(AuthError::TokenRejected(_))
    ));
    e.clock.advance(Duration::minutes(1));
    assert!(matches!(
        e.auth.login_token(b"good", IP2).await,
        Err(AuthError::TokenRejected(m)) if m.contains("expired")
    ));
    let mut st = access();
    st.revoked.insert(GrantId::new("t-1").unwrap());
    let e2dir = tempfile::tempdir().unwrap();
    let e2 = open(
        e2dir.path(),
        st,
        Some(Arc::new(FixedToken(Ok(installer(Duration::hours(1)))))),
    );
    assert!(matches!(
        e2.auth.login_token(b"good", IP).await,
        Err(AuthError::TokenRejected(m)) if m.contains("revoked")
    ));
    let rows = audit_rows(&e.store);
    assert!(
        rows.iter()
            .filter(|r| r.kind == "login" && r.outcome == "failed")
            .count()
            >= 2
    );
    // No verifier configured.
    let e3dir = tempfile::tempdir().unwrap();
    let e3 = open(e3dir.path(), access(), None);
    assert_eq!(
        e3.auth.login_token(b"good", IP).await,
        Err(AuthError::TokenUnavailable)
    );
}

#[tokio::test]
async fn an_over_long_password_is_refused_without_matching() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = access();
    let long = "p".repeat(2000);
    st.users[0].password = Some(hash_password(&long, 10));
    let e = open(dir.path(), st, None);
    assert_eq!(
        e.auth.login_password("ana@example.com", &long, IP).await,
        Err(AuthError::InvalidCredentials)
    );
}

#[tokio::test]
async fn a_token_session_never_outlives_the_tokens_grant() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(
        dir.path(),
        access(),
        Some(Arc::new(FixedToken(Ok(installer(Duration::minutes(30)))))),
    );
    let s = e.auth.login_token(b"good", IP).await.unwrap();
    assert_eq!(s.info.expires, NOW + Duration::minutes(30));
    e.clock.advance(Duration::minutes(30));
    assert_eq!(
        e.auth.authenticate(&s.token).await,
        Err(AuthError::SessionExpired)
    );
}

fn with_users(f: impl Fn(&mut crate::access::User)) -> Arc<AccessState> {
    let mut st = access();
    for u in &mut st.users {
        f(u);
    }
    Arc::new(st)
}

#[tokio::test]
async fn a_bundle_that_changes_a_password_ends_that_users_sessions_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let ana = e
        .auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    let bob = e
        .auth
        .login_password("bob@example.com", "pw-bob", IP2)
        .await
        .unwrap();
    // A bundle that only renames people ends nothing.
    e.authz
        .set_state(with_users(|u| u.name = format!("{} (renamed)", u.id)));
    assert_eq!(e.auth.end_changed_sessions().await.unwrap(), 0);
    assert_eq!(
        e.auth.authenticate(&ana.token).await.unwrap().user,
        uid("ana")
    );
    // A bundle with a new password for ana.
    e.authz.set_state(with_users(|u| {
        if u.id == uid("ana") {
            u.password = Some(hash_password("pw-ana-2", 1000));
        }
    }));
    assert_eq!(
        e.auth.authenticate(&ana.token).await,
        Err(AuthError::PasswordChanged)
    );
    assert_eq!(
        e.auth.authenticate(&ana.token).await,
        Err(AuthError::Unauthenticated),
        "the session is gone"
    );
    assert_eq!(
        e.auth.authenticate(&bob.token).await.unwrap().user,
        uid("bob")
    );
    let ended: Vec<_> = audit_rows(&e.store)
        .into_iter()
        .filter(|r| r.kind == "session_ended")
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].actor.as_deref(), Some("ana"));
    assert_eq!(ended[0].detail["reason"], "password_changed");
    assert_eq!(ended[0].detail["session"], ana.info.id.as_str());
    // The old password no longer logs in; the new one does.
    e.clock.advance(Duration::seconds(5));
    assert_eq!(
        e.auth
            .login_password("ana@example.com", "pw-ana", IP)
            .await
            .unwrap_err(),
        AuthError::InvalidCredentials
    );
    e.clock.advance(Duration::seconds(5));
    let again = e
        .auth
        .login_password("ana@example.com", "pw-ana-2", IP)
        .await
        .unwrap();
    assert_eq!(
        e.auth.authenticate(&again.token).await.unwrap().user,
        uid("ana")
    );
}

#[tokio::test]
async fn a_bundle_that_deactivates_a_user_ends_every_session_of_theirs_even_unused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let mut tokens = Vec::new();
    for ip in [IP, IP2] {
        tokens.push(
            e.auth
                .login_password("bob@example.com", "pw-bob", ip)
                .await
                .unwrap()
                .token,
        );
    }
    let ana = e
        .auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    e.authz.set_state(with_users(|u| {
        if u.id == uid("bob") {
            u.active = false;
        }
    }));
    assert_eq!(e.auth.end_changed_sessions().await.unwrap(), 2);
    assert_eq!(e.auth.sessions_of(&uid("bob")).await.unwrap(), vec![]);
    for t in &tokens {
        assert_eq!(
            e.auth.authenticate(t).await,
            Err(AuthError::Unauthenticated)
        );
    }
    assert_eq!(
        e.auth.authenticate(&ana.token).await.unwrap().user,
        uid("ana")
    );
    let reasons: Vec<String> = audit_rows(&e.store)
        .into_iter()
        .filter(|r| r.kind == "session_ended")
        .map(|r| format!("{}:{}", r.actor.unwrap_or_default(), r.detail["reason"]))
        .collect();
    assert_eq!(
        reasons,
        vec!["bob:\"user_inactive\"", "bob:\"user_inactive\""]
    );
}

/// Five wrong passwords for `email`, each from its own address, 5 s apart: the account locks.
async fn lock_from_elsewhere(e: &Env, email: &str, cookie: Option<&str>) {
    for i in 0..5u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 9, i + 1));
        let _ = e
            .auth
            .login_password_on_device(email, "guess", ip, cookie)
            .await;
        e.clock.advance(Duration::seconds(5));
    }
}

#[tokio::test]
async fn an_attacker_locking_an_account_cannot_keep_its_owner_out_of_a_device_that_logged_in_before()
 {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let first = e
        .auth
        .login_password("adm@example.com", "pw-adm", IP)
        .await
        .unwrap();
    let cookie = first.device.clone().unwrap();
    // Someone elsewhere on the LAN guesses until the account locks.
    lock_from_elsewhere(&e, "adm@example.com", None).await;
    assert!(matches!(
        e.auth.login_password("adm@example.com", "pw-adm", IP).await,
        Err(AuthError::Locked { .. })
    ));
    // The owner's device still gets in, and gets a fresh cookie.
    let s = e
        .auth
        .login_password_on_device("adm@example.com", "pw-adm", IP, Some(&cookie))
        .await
        .unwrap();
    assert_eq!(s.info.user, uid("adm"));
    assert!(s.device.is_some() && s.device != Some(cookie.clone()));
    // The untrusted lockout stays for everybody else.
    assert!(matches!(
        e.auth
            .login_password("adm@example.com", "pw-adm", IP2)
            .await,
        Err(AuthError::Locked { .. })
    ));
    // A forged cookie, or bob's cookie for the admin's account, is no cookie at all.
    let bob = e
        .auth
        .login_password("bob@example.com", "pw-bob", IP2)
        .await
        .unwrap()
        .device
        .unwrap();
    let (nonce, _) = cookie.split_once('.').unwrap();
    let forged = format!("{nonce}.{}", crate::util_b64::encode([0u8; 32]));
    for bad in [bob.as_str(), forged.as_str(), "x", &"a".repeat(4000)] {
        assert!(
            matches!(
                e.auth
                    .login_password_on_device("adm@example.com", "pw-adm", IP, Some(bad))
                    .await,
                Err(AuthError::Locked { .. })
            ),
            "cookie `{}` was accepted",
            &bad[..bad.len().min(20)]
        );
    }
    // The cookie survives a restart (the secret is kept in the database).
    let e2 = open(dir.path(), access(), None);
    e2.auth
        .login_password_on_device("adm@example.com", "pw-adm", IP, Some(&cookie))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_trusted_device_has_its_own_failure_budget_and_locks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), access(), None);
    let cookie = e
        .auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap()
        .device
        .unwrap();
    // Guesses with the cookie (a stolen one, or a forgetful owner) lock the cookie...
    lock_from_elsewhere(&e, "ana@example.com", Some(&cookie)).await;
    assert!(matches!(
        e.auth
            .login_password_on_device("ana@example.com", "pw-ana", IP, Some(&cookie))
            .await,
        Err(AuthError::Locked { .. })
    ));
    // ...and not the account: a client without it logs in.
    e.auth
        .login_password("ana@example.com", "pw-ana", IP2)
        .await
        .unwrap();
    let e_rows = audit_rows(&e.store);
    assert!(
        e_rows
            .iter()
            .any(|r| r.kind == "login" && r.outcome == "locked")
    );
    // Admins see the device's lockout as such.
    let list = e.auth.lockouts(&uid("adm")).await.unwrap();
    let dev = list
        .iter()
        .find(|l| l.label == "ana@example.com (trusted device)")
        .unwrap();
    assert!(dev.key.starts_with("device:") && dev.locked_until.is_some());
    assert!(!list.iter().any(|l| l.label == "ana@example.com"));
}
