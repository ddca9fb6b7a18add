//! The box's one effective clock, max(system clock, signed floor, high-water mark − tolerance),
//! against a real SQLite file and an injected `ManualClock`: a clock behind the floor still
//! issues sessions that work, setting the clock back never revives an expired grant, a forward
//! jump is put right by the next signed bundle, and all of it survives a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod e2e_support;
mod grants_common;

use std::net::{IpAddr, Ipv4Addr};

use grants_common::*;
use serde_json::json;
use sitegate::audit::Audit;
use sitegate::auth::Auth;
use sitegate::authz::owner::{Access, GrantsFollower};
use sitegate::authz::{Decision, DenyReason, Target};
use sitegate::clock::{Clock, SharedClock};
use sitegate::grants::{CLOCK_TOLERANCE, GrantEngine};
use sitegate::model::{Capability, SiteId, UnitId, UserId};
use sitegate::store::Store;
use time::Duration;

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));

/// The owner over `engine`, and its writer that follows the engine's state.
fn authz_over(engine: &GrantEngine) -> (Access, GrantsFollower) {
    let (access, writers) = Access::open(
        engine.clone(),
        SiteId::new(SITE).unwrap(),
        vec![(UnitId::new("hvac-1").unwrap(), None)],
    );
    (access, writers.follower)
}

fn ana() -> UserId {
    UserId::new("u-1").unwrap()
}

/// Events of `kind` queued for MQTT (the `…/events` topic), from the outbox.
fn outbox_events(store: &Store, kind: &str) -> usize {
    store
        .with_conn(|c| {
            let mut stmt = c.prepare("SELECT payload FROM outbox WHERE class = 'event'")?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut n = 0;
            for p in rows {
                let v: serde_json::Value = serde_json::from_slice(&p?).unwrap();
                if v["kind"] == json!(kind) {
                    n += 1;
                }
            }
            Ok(n)
        })
        .unwrap()
}

/// Bundle `seq` in which ana (u-1) is site admin until `expires`.
fn admin_until(seq: u64, expires: time::OffsetDateTime) -> serde_json::Value {
    let mut b = bundle(seq);
    b["grants"][0]["role"] = json!("admin");
    b["grants"][0]["expires_at"] = json!(ts(expires));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_two_days_behind_the_floor_issues_sessions_that_the_next_call_accepts_and_that_still_expire()
 {
    let fx = Fx::new();
    fx.apply_seq(1);
    // The box reboots without a real-time clock: two days behind the last signed time.
    fx.clock.set(issued(1) - Duration::days(2));
    let engine = fx.reopen();
    let (authz, _) = authz_over(&engine);
    let clock = engine.clock();
    let audit = Audit::new(fx.store.clone(), clock.clone(), None);
    let cfg = sitegate::config::Auth {
        session_ttl: std::time::Duration::from_secs(3600),
        throttle_base: std::time::Duration::from_millis(500),
        throttle_max: std::time::Duration::from_secs(4),
        lockout_after_failures: 5,
        lockout: std::time::Duration::from_secs(600),
    };
    let auth = Auth::new(
        fx.store.clone(),
        audit,
        authz.clone(),
        clock.clone(),
        cfg,
        None,
    )
    .unwrap();
    let s = auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    // Issued on the effective time (the floor), not on the lagging system clock.
    assert_eq!(s.info.expires, issued(1) + Duration::hours(1));
    assert_eq!(auth.authenticate(&s.token).await.unwrap().user, ana());
    // Time passes while the clock is still behind: the session works, then it ends on time.
    fx.clock.advance(Duration::minutes(30));
    assert_eq!(auth.authenticate(&s.token).await.unwrap().user, ana());
    fx.clock.advance(Duration::minutes(32));
    assert_eq!(
        auth.authenticate(&s.token).await.unwrap_err().code(),
        "session_expired"
    );
    // A lockout is judged on the same clock: it ends after its period, clock still behind.
    for i in 0..5u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1));
        let _ = auth.login_password("ana@example.com", "nope", ip).await;
        fx.clock.advance(Duration::seconds(5));
    }
    assert_eq!(
        auth.login_password("ana@example.com", "pw-ana", IP)
            .await
            .unwrap_err()
            .code(),
        "locked"
    );
    fx.clock.advance(Duration::minutes(11));
    assert!(
        fx.clock.now() < issued(1),
        "the system clock is still behind"
    );
    let s = auth
        .login_password("ana@example.com", "pw-ana", IP)
        .await
        .unwrap();
    assert_eq!(auth.authenticate(&s.token).await.unwrap().user, ana());
}

#[test]
fn setting_the_clock_back_an_hour_never_revives_an_admin_grant_that_expired_after_the_last_signed_time()
 {
    let fx = Fx::new();
    let floor = issued(1);
    let expiry = floor + Duration::minutes(150);
    fx.clock.set(floor);
    fx.apply(&sign_bundle(&admin_until(1, expiry))).unwrap();
    let (authz, _) = authz_over(&fx.engine);
    let manage = |engine: &GrantEngine| {
        authz.decide(
            &ana(),
            Capability::ManageUsers,
            &Target::Site,
            engine.effective_now(),
        )
    };
    assert_eq!(manage(&fx.engine), Decision::Allow);
    // Real time passes past the expiry (no bundle since: the floor stays).
    fx.clock.advance(Duration::hours(3));
    assert_eq!(manage(&fx.engine), Decision::Deny(DenyReason::Expired));
    assert!(!fx.engine.check_clock());
    // Someone sets the clock back one hour: before the expiry, after the floor.
    fx.clock.set(floor + Duration::hours(2));
    assert!(fx.clock.now() < expiry && fx.clock.now() > floor);
    assert_eq!(
        manage(&fx.engine),
        Decision::Deny(DenyReason::Expired),
        "admin capabilities must not come back"
    );
    assert_eq!(
        fx.engine.effective_now(),
        floor + Duration::hours(3) - CLOCK_TOLERANCE
    );
    assert!(fx.engine.check_clock());
    assert!(fx.engine.check_clock());
    let raised = fx.audit_of_kind("clock_rollback");
    assert_eq!(raised.len(), 1, "raised once per episode");
    assert_eq!(
        raised[0].detail["clock"],
        json!(ts(floor + Duration::hours(2)))
    );
    assert_eq!(
        raised[0].detail["high_water"],
        json!(ts(floor + Duration::hours(3)))
    );
    assert_eq!(raised[0].detail["behind_secs"], json!(3600));
    assert_eq!(
        outbox_events(&fx.store, "clock_rollback"),
        1,
        "also sent upward"
    );

    // Restart on the same SQLite file, clock still an hour back: still expired.
    let store = Store::open_in(fx.dir.path()).unwrap();
    let again = open_engine(&store, &fx.clock, &fx.cfg);
    assert_eq!(
        again.effective_now(),
        floor + Duration::hours(3) - CLOCK_TOLERANCE
    );
    assert_eq!(manage(&again), Decision::Deny(DenyReason::Expired));
    // A small NTP correction within the tolerance is no rollback.
    let fx2 = Fx::new();
    fx2.clock.set(floor);
    fx2.apply(&sign_bundle(&admin_until(1, expiry))).unwrap();
    fx2.clock.set(floor + Duration::hours(1));
    assert!(!fx2.engine.check_clock());
    fx2.clock
        .set(floor + Duration::hours(1) - Duration::seconds(30));
    assert!(!fx2.engine.check_clock());
    assert_eq!(fx2.audit_of_kind("clock_rollback").len(), 0);
}

#[test]
fn a_forward_jump_is_put_right_by_the_next_bundle_signed_at_the_corrected_time_and_not_by_a_stale_one()
 {
    let fx = Fx::new();
    fx.apply_seq(1);
    let (authz, follower) = authz_over(&fx.engine);
    let view = |engine: &GrantEngine| {
        authz.decide(
            &ana(),
            Capability::View,
            &Target::Unit(UnitId::new("hvac-1").unwrap()),
            engine.effective_now(),
        )
    };
    assert_eq!(view(&fx.engine), Decision::Allow);
    // The clock is set ten years ahead by mistake: ana's one-year grant looks expired.
    let real = issued(1) + Duration::hours(1);
    fx.clock.set(real + Duration::days(3650));
    assert_eq!(view(&fx.engine), Decision::Deny(DenyReason::Expired));
    assert!(!fx.engine.check_clock());
    // A bundle arrives while the clock is still wrong: applied, but it corrects nothing.
    let mut b = bundle(2);
    b["issued_at"] = json!(ts(real));
    fx.apply(&sign_bundle(&b)).unwrap();
    follower.sync_grants();
    assert_eq!(view(&fx.engine), Decision::Deny(DenyReason::Expired));
    assert_eq!(fx.audit_of_kind("clock_corrected").len(), 0);
    // NTP puts the clock right: that is a rollback of the mark, still nothing revives.
    fx.clock.set(real + Duration::minutes(5));
    assert!(fx.engine.check_clock());
    assert_eq!(fx.audit_of_kind("clock_rollback").len(), 1);
    assert_eq!(view(&fx.engine), Decision::Deny(DenyReason::Expired));
    // A stale bundle (signed long before the box's clock) corrects nothing either.
    let mut b = bundle(3);
    b["issued_at"] = json!(ts(real - Duration::hours(2)));
    fx.apply(&sign_bundle(&b)).unwrap();
    assert_eq!(fx.audit_of_kind("clock_corrected").len(), 0);
    assert_eq!(view(&fx.engine), Decision::Deny(DenyReason::Expired));
    // The next bundle signed at the (now right) time resets the mark.
    let signed = real + Duration::minutes(5) - Duration::seconds(10);
    let mut b = bundle(4);
    b["issued_at"] = json!(ts(signed));
    fx.apply(&sign_bundle(&b)).unwrap();
    follower.sync_grants();
    let corrected = fx.audit_of_kind("clock_corrected");
    assert_eq!(corrected.len(), 1);
    assert_eq!(
        corrected[0].detail["corrected_to"],
        json!(ts(real + Duration::minutes(5)))
    );
    assert_eq!(corrected[0].detail["seq"], json!(4));
    assert_eq!(fx.engine.effective_now(), real + Duration::minutes(5));
    assert_eq!(view(&fx.engine), Decision::Allow);
    assert!(!fx.engine.check_clock());
    // The correction was persisted: a restart keeps it.
    let store = Store::open_in(fx.dir.path()).unwrap();
    let again = open_engine(&store, &fx.clock, &fx.cfg);
    assert_eq!(again.effective_now(), real + Duration::minutes(5));
    assert_eq!(view(&again), Decision::Allow);
    assert!(!again.check_clock());
}

#[test]
fn the_high_water_mark_keeps_time_while_the_clock_is_behind_and_survives_a_restart() {
    let fx = Fx::new();
    fx.apply_seq(1);
    let clock: SharedClock = fx.engine.clock();
    fx.clock.advance(Duration::days(1));
    assert_eq!(clock.now(), issued(1) + Duration::days(1));
    // Set back a week; then an hour passes.
    fx.clock.set(issued(1) - Duration::days(6));
    fx.clock.advance(Duration::hours(1));
    assert_eq!(
        clock.now(),
        issued(1) + Duration::days(1) + Duration::hours(1) - CLOCK_TOLERANCE
    );
    assert!(fx.engine.check_clock());
    let store = Store::open_in(fx.dir.path()).unwrap();
    let again = open_engine(&store, &fx.clock, &fx.cfg);
    assert_eq!(
        again.effective_now(),
        issued(1) + Duration::days(1) + Duration::hours(1) - CLOCK_TOLERANCE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_the_newest_time_it_saw_when_it_stops() {
    let s = e2e_support::Site::start("plain", "").await;
    let members = [e2e_support::Member {
        user: "ada",
        role: "admin",
        scope: json!({"site": e2e_support::SITE}),
        grant: "g-admin",
    }];
    s.apply(e2e_support::bundle(1, &members, &[])).await;
    // Time passes (less than the one-minute persistence period); a login reads the clock.
    s.clock.advance(Duration::seconds(30));
    let seen = s.clock.now();
    s.login("ada").await;
    let store = s.daemon.store.clone();
    s.stop().await;
    let stored = store
        .with_conn(|c| Store::meta_get(c, "clock.high_water_ms"))
        .unwrap();
    assert_eq!(stored, Some(sitegate::clock::unix_ms(seen).to_string()));
}
