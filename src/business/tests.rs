//! Suspension of a service business: the decision, who may lift it, durability, later bundles,
//! and the property that no local operation by a user of the suspended business lifts it.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::access::{AccessState, Grant};
use crate::authz::tests::{NOW, grant, inputs, local, s_group, s_site, s_unit, state, uid, unit};
use crate::authz::{Decision, DenyReason, Target};
use crate::clock::ManualClock;
use crate::delegation::{DelegationRequest, Delegations};
use crate::model::{Capability, Management, Role};

const TOPIC: &str = "sitegate/v1/s-1/gw-1/suspensions";

fn acme() -> BusinessId {
    BusinessId::new("acme-service").unwrap()
}

/// Independent site. `own` is the owner (admin on the site); `padm` (admin on the site) and
/// `ptech` (technician on the site) work for acme-service; `other` (technician) for beta-hvac;
/// `ana` holds viewer on the site and, from `ptech`, control-only on group g-a; `bob` holds only
/// a delegation from `ptech` (control-only on unit a1).
fn site() -> (AccessState, Vec<Grant>) {
    let mut st = state(
        &["own", "padm", "ptech", "other", "ana", "bob"],
        vec![
            grant("g-own", "own", Role::Admin, s_site()),
            grant("g-padm", "padm", Role::Admin, s_site()),
            grant("g-ptech", "ptech", Role::Technician, s_site()),
            grant("g-other", "other", Role::Technician, s_site()),
            grant("g-ana", "ana", Role::Viewer, s_site()),
        ],
    );
    for u in &mut st.users {
        match u.id.as_str() {
            "own" => u.owner = true,
            "padm" | "ptech" => u.business = Some(acme()),
            "other" => u.business = Some(BusinessId::new("beta-hvac").unwrap()),
            _ => {}
        }
    }
    let local = vec![
        local(
            "l-ana",
            "ana",
            Role::ControlOnly,
            s_group("g-a"),
            "ptech",
            "g-ptech",
        ),
        local(
            "l-bob",
            "bob",
            Role::ControlOnly,
            s_unit("a1"),
            "ptech",
            "g-ptech",
        ),
    ];
    (st, local)
}

struct Env {
    authz: crate::authz::owner::Access,
    /// The owner's writer of local delegations, for a test that opens the delegation service.
    local: crate::authz::owner::LocalWriter,
    b: Businesses,
    store: Store,
}

fn open(dir: &Path, st: AccessState, local: Vec<Grant>) -> Env {
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let store = Store::open_in(dir).unwrap();
    let audit = Audit::new(store.clone(), clock.clone(), None);
    let (authz, writers, _) = crate::authz::owner::Access::staged(inputs(st, local));
    let b = Businesses::new(
        store.clone(),
        audit,
        writers.suspensions,
        clock,
        Some(TOPIC.into()),
    )
    .unwrap();
    Env {
        authz,
        local: writers.local,
        b,
        store,
    }
}

fn decide(authz: &crate::authz::owner::Access, who: &str, cap: Capability, u: &str) -> Decision {
    authz.decide(&uid(who), cap, &Target::Unit(unit(u)), NOW)
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .with_conn(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .unwrap()
}

const SUSPENDED: Decision = Decision::Deny(DenyReason::BusinessSuspended);

#[tokio::test]
async fn a_suspension_denies_every_grant_of_the_business_and_its_delegations_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (st, local) = site();
    let env = open(dir.path(), st, local);
    assert!(decide(&env.authz, "ptech", Capability::Configure, "a1").is_allow());
    assert!(decide(&env.authz, "ana", Capability::Control, "a2").is_allow());
    assert!(decide(&env.authz, "bob", Capability::Control, "a1").is_allow());

    let change = env
        .b
        .suspend(&uid("own"), acme().as_str(), Some("contract ended".into()))
        .await
        .unwrap();
    let Change::Done(s) = change else {
        panic!("expected a new suspension")
    };
    assert_eq!(s.members, vec![uid("padm"), uid("ptech")]);
    assert_eq!(s.suspended_by, "own");

    for who in ["padm", "ptech"] {
        for u in ["a1", "a2", "b1", "c1"] {
            assert_eq!(decide(&env.authz, who, Capability::View, u), SUSPENDED);
        }
        assert_eq!(
            env.authz
                .decide(&uid(who), Capability::ManageUsers, &Target::Site, NOW),
            SUSPENDED
        );
    }
    // Delegations from a suspended user stop: bob holds nothing else, ana keeps her own viewer.
    assert_eq!(decide(&env.authz, "bob", Capability::View, "a1"), SUSPENDED);
    assert!(decide(&env.authz, "ana", Capability::View, "a2").is_allow());
    assert_eq!(
        decide(&env.authz, "ana", Capability::Control, "a2"),
        Decision::Deny(DenyReason::RoleLacks)
    );
    // Another business and the owner are untouched.
    assert!(decide(&env.authz, "other", Capability::Configure, "b1").is_allow());
    assert!(decide(&env.authz, "own", Capability::Configure, "b1").is_allow());
    // Audited, and the retained state for the cloud lists the suspension.
    assert_eq!(
        count(
            &env.store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'business_suspended' AND outcome = 'ok'"
        ),
        1
    );
    let payload: String = env
        .store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT CAST(payload AS TEXT) FROM outbox WHERE topic = ?1 AND class = 'state' AND retain = 1",
                [TOPIC],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(doc["suspended"][0]["business"], "acme-service");
    assert_eq!(
        doc["suspended"][0]["members"],
        serde_json::json!(["padm", "ptech"])
    );

    // Restored by the owner: everything is back.
    let restored = env.b.restore(&uid("own"), acme().as_str()).await.unwrap();
    assert_eq!(restored.business, acme());
    assert!(decide(&env.authz, "ptech", Capability::Configure, "a1").is_allow());
    assert!(decide(&env.authz, "bob", Capability::Control, "a1").is_allow());
    assert_eq!(
        count(&env.store, "SELECT COUNT(*) FROM business_suspensions"),
        0
    );
    let doc: serde_json::Value = serde_json::from_str(
        &env.store
            .with_conn(|c| {
                Ok(c.query_row(
                    "SELECT CAST(payload AS TEXT) FROM outbox WHERE topic = ?1",
                    [TOPIC],
                    |r| r.get::<_, String>(0),
                )?)
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["suspended"], serde_json::json!([]));
    assert_eq!(
        env.b
            .restore(&uid("own"), acme().as_str())
            .await
            .unwrap_err(),
        BusinessError::NotSuspended
    );
}

#[tokio::test]
async fn only_the_site_owner_may_suspend_or_restore_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (st, local) = site();
    let env = open(dir.path(), st, local);
    // Not the owner: a business admin with site admin, a user of another business, a local
    // admin without the owner flag.
    for (who, reason) in [
        ("padm", "business_member"),
        ("other", "business_member"),
        ("ana", "not_site_owner"),
        ("nobody", "not_site_owner"),
    ] {
        assert_eq!(
            env.b
                .suspend(&uid(who), acme().as_str(), None)
                .await
                .unwrap_err(),
            BusinessError::NotOwner { reason }
        );
    }
    assert_eq!(
        count(&env.store, "SELECT COUNT(*) FROM business_suspensions"),
        0
    );
    env.b
        .suspend(&uid("own"), acme().as_str(), None)
        .await
        .unwrap();
    for who in ["padm", "ptech", "other", "ana"] {
        assert!(matches!(
            env.b.restore(&uid(who), acme().as_str()).await.unwrap_err(),
            BusinessError::NotOwner { .. }
        ));
        assert!(matches!(
            env.b.list(&uid(who)).await.unwrap_err(),
            BusinessError::NotOwner { .. }
        ));
    }
    assert_eq!(
        count(&env.store, "SELECT COUNT(*) FROM business_suspensions"),
        1
    );
    assert_eq!(
        count(
            &env.store,
            "SELECT COUNT(*) FROM audit WHERE kind IN ('business_suspended', 'business_restored', 'business_list') AND outcome = 'denied'"
        ),
        12
    );
    // Suspending again keeps the first suspension; an unknown business is refused.
    assert!(matches!(
        env.b.suspend(&uid("own"), acme().as_str(), Some("again".into())).await.unwrap(),
        Change::Unchanged(s) if s.note.is_empty()
    ));
    assert_eq!(
        env.b
            .suspend(&uid("own"), "nobody-inc", None)
            .await
            .unwrap_err(),
        BusinessError::UnknownBusiness
    );
    let list = env.b.list(&uid("own")).await.unwrap();
    let names: Vec<(&str, bool)> = list
        .iter()
        .map(|i| (i.business.as_str(), i.suspended))
        .collect();
    assert_eq!(names, vec![("acme-service", true), ("beta-hvac", false)]);
}

#[tokio::test]
async fn a_suspension_is_identical_after_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (st, local) = site();
    let before = {
        let env = open(dir.path(), st.clone(), local.clone());
        env.b
            .suspend(&uid("own"), acme().as_str(), Some("audit".into()))
            .await
            .unwrap();
        env.store.with_conn(|c| load(c)).unwrap()
    };
    let env = open(dir.path(), st, local);
    let after = env.store.with_conn(|c| load(c)).unwrap();
    assert_eq!(before, after);
    assert_eq!(after.len(), 1);
    assert_eq!(
        decide(&env.authz, "ptech", Capability::View, "a1"),
        SUSPENDED
    );
    assert_eq!(decide(&env.authz, "bob", Capability::View, "a1"), SUSPENDED);
    assert!(decide(&env.authz, "other", Capability::View, "a1").is_allow());
}

#[tokio::test]
async fn a_later_bundle_does_not_lift_a_suspension() {
    let dir = tempfile::tempdir().unwrap();
    let (st, local) = site();
    let env = open(dir.path(), st.clone(), local);
    env.b
        .suspend(&uid("own"), acme().as_str(), None)
        .await
        .unwrap();
    // The next bundle: ptech no longer names the business, padm's grant is renewed, and a new
    // acme user joins.
    let mut next = st.clone();
    next.seq += 1;
    for u in &mut next.users {
        if u.id.as_str() == "ptech" {
            u.business = None;
        }
    }
    let mut newcomer = crate::authz::tests::user("newbie");
    newcomer.business = Some(acme());
    next.users.push(newcomer);
    next.grants
        .push(grant("g-new", "newbie", Role::Technician, s_site()));
    env.authz.set_state(Arc::new(next));
    for who in ["padm", "ptech", "newbie"] {
        assert_eq!(decide(&env.authz, who, Capability::View, "c1"), SUSPENDED);
    }
    assert!(env.b.refresh().is_ok());
    assert_eq!(
        decide(&env.authz, "ptech", Capability::View, "c1"),
        SUSPENDED
    );
}

#[tokio::test]
async fn a_suspension_made_by_another_process_is_picked_up_by_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (st, local) = site();
    let env = open(dir.path(), st, local);
    // The CLI writes through its own connection.
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let other = Store::open_in(dir.path()).unwrap();
    let audit = Audit::new(other.clone(), clock, None);
    other
        .with_conn(|c| suspend_in(c, &audit, None, &acme(), &[uid("padm")], "cli:own", "", NOW))
        .unwrap();
    assert!(decide(&env.authz, "ptech", Capability::View, "a1").is_allow());
    assert!(env.b.refresh().unwrap());
    assert_eq!(
        decide(&env.authz, "ptech", Capability::View, "a1"),
        SUSPENDED
    );
    assert!(!env.b.refresh().unwrap());
}

#[test]
fn a_token_user_of_a_suspended_business_is_suspended_too() {
    let (mut st, _) = site();
    let mut u = crate::authz::tests::user("inst");
    u.business = Some(acme());
    let mut g = grant("t-1", "inst", Role::Technician, s_site());
    g.origin = crate::access::Origin::Token;
    st.users.push(u);
    st.grants.push(g);
    let mut inp = inputs(st, Vec::new());
    inp.suspended = vec![(acme(), vec![])];
    let ix = Index::build(&inp);
    assert_eq!(
        ix.decide(
            &uid("inst"),
            Capability::View,
            &Target::Unit(unit("a1")),
            NOW
        ),
        SUSPENDED
    );
}

/// What a user of the suspended business may try on this box.
#[derive(Debug, Clone)]
enum Op {
    Restore(usize),
    SuspendOther(usize),
    List(usize),
    Delegate {
        by: usize,
        to: usize,
        role: Role,
        scope: usize,
    },
    Revoke(usize, usize),
}

const ACTORS: [&str; 2] = ["padm", "ptech"];
const EVERYONE: [&str; 6] = ["own", "padm", "ptech", "other", "ana", "bob"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize).prop_map(Op::Restore),
        (0..2usize).prop_map(Op::SuspendOther),
        (0..2usize).prop_map(Op::List),
        (
            0..2usize,
            0..6usize,
            prop_oneof![
                Just(Role::Viewer),
                Just(Role::ControlOnly),
                Just(Role::Technician),
                Just(Role::Admin)
            ],
            0..3usize
        )
            .prop_map(|(by, to, role, scope)| Op::Delegate {
                by,
                to,
                role,
                scope
            }),
        (0..2usize, 0..2usize).prop_map(|(a, g)| Op::Revoke(a, g)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn no_local_operation_by_a_user_of_the_suspended_business_lifts_the_suspension(
        ops in proptest::collection::vec(op(), 1..12)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (st, local) = site();
            let env = open(dir.path(), st, local);
            let clock: SharedClock = Arc::new(ManualClock::new(NOW));
            let audit = Audit::new(env.store.clone(), clock.clone(), None);
            let d = Delegations::new(env.store.clone(), audit, env.local, clock, dir.path(), None).unwrap();
            env.b.suspend(&uid("own"), acme().as_str(), None).await.unwrap();
            let scopes = [s_site(), s_group("g-a"), s_unit("b1")];
            for o in ops {
                match o {
                    Op::Restore(a) => {
                        prop_assert!(env.b.restore(&uid(ACTORS[a]), acme().as_str()).await.is_err());
                    }
                    Op::SuspendOther(a) => {
                        prop_assert!(env.b.suspend(&uid(ACTORS[a]), "beta-hvac", None).await.is_err());
                    }
                    Op::List(a) => {
                        prop_assert!(env.b.list(&uid(ACTORS[a])).await.is_err());
                    }
                    Op::Delegate { by, to, role, scope } => {
                        let req = DelegationRequest {
                            user: uid(EVERYONE[to]),
                            role,
                            scope: scopes[scope].clone(),
                            not_before: None,
                            expires_at: None,
                        };
                        prop_assert!(d.create(&uid(ACTORS[by]), req).await.is_err());
                    }
                    Op::Revoke(a, g) => {
                        let id = crate::model::GrantId::new(["l-ana", "l-bob"][g]).unwrap();
                        let _ = d.revoke(&uid(ACTORS[a]), &id).await;
                    }
                }
                let _ = env.b.refresh();
                prop_assert_eq!(count(&env.store, "SELECT COUNT(*) FROM business_suspensions"), 1);
                for who in ACTORS {
                    for u in ["a1", "a2", "b1", "c1"] {
                        prop_assert_eq!(decide(&env.authz, who, Capability::View, u), SUSPENDED);
                    }
                }
                // Nobody gains through the suspended users: bob's only access came from ptech.
                prop_assert!(!decide(&env.authz, "bob", Capability::View, "a1").is_allow());
                prop_assert!(!decide(&env.authz, "ana", Capability::Control, "a1").is_allow());
            }
            Ok(())
        })?;
    }
}

#[test]
fn pro_sites_behave_the_same() {
    let (mut st, local) = site();
    st.policy.management = Management::Pro;
    let mut inp = inputs(st, local);
    inp.suspended = vec![(acme(), vec![])];
    let ix = Index::build(&inp);
    assert!(ix.is_owner(&uid("own")));
    assert!(!ix.is_owner(&uid("padm")));
    assert_eq!(
        ix.decide(&uid("padm"), Capability::View, &Target::Site, NOW),
        SUSPENDED
    );
}
