//! Delegation rules, pro vs independent, persistence with signatures, and the invariant that a
//! delegation never yields more than its root delegator holds.

use std::path::Path;
use std::sync::Arc;

use time::Duration;

use super::*;
use crate::access::AccessState;
use crate::authz::tests::{NOW, grant, inputs, local, s_group, s_site, s_unit, state, uid, unit};
use crate::authz::{Decision, Inputs};
use crate::clock::ManualClock;

const TOPIC: &str = "sitegate/v1/s-1/gw-1/requests";

struct Env {
    authz: crate::authz::owner::Access,
    d: Delegations,
    store: Store,
}

fn open(dir: &Path, st: AccessState) -> Env {
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let store = Store::open_in(dir).unwrap();
    let audit = Audit::new(store.clone(), clock.clone(), None);
    let (authz, writers, _) = crate::authz::owner::Access::staged(inputs(st, vec![]));
    let d = Delegations::new(
        store.clone(),
        audit,
        writers.local,
        clock,
        dir,
        Some(TOPIC.into()),
    )
    .unwrap();
    Env { authz, d, store }
}

fn site_state(management: Management) -> AccessState {
    let mut exp = grant("g-tech", "tech", Role::Technician, s_group("g-a"));
    exp.expires_at = Some(NOW + Duration::days(1));
    let mut st = state(
        &["adm", "tech", "ana", "bob", "viewer"],
        vec![
            grant("g-adm", "adm", Role::Admin, s_site()),
            exp,
            grant("g-view", "viewer", Role::Viewer, s_site()),
        ],
    );
    st.policy.management = management;
    st
}

fn req(user: &str, role: Role, scope: Scope, exp: Option<Duration>) -> DelegationRequest {
    DelegationRequest {
        user: uid(user),
        role,
        scope,
        not_before: None,
        expires_at: exp.map(|d| NOW + d),
    }
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .with_conn(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .unwrap()
}

fn allowed(authz: &crate::authz::owner::Access, who: &str, cap: Capability, u: &str) -> bool {
    authz
        .decide(&uid(who), cap, &Target::Unit(unit(u)), NOW)
        .is_allow()
}

#[tokio::test]
async fn an_independent_delegation_takes_effect_at_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let e = open(dir.path(), site_state(Management::Independent));
        assert!(!allowed(&e.authz, "ana", Capability::Control, "a1"));
        let created =
            e.d.create(
                &uid("adm"),
                req("ana", Role::ControlOnly, s_group("g-a"), None),
            )
            .await
            .unwrap();
        let Created::Effective(g) = created else {
            panic!("expected an effective grant")
        };
        assert!(allowed(&e.authz, "ana", Capability::Control, "a1"));
        assert!(!allowed(&e.authz, "ana", Capability::Control, "b1"));
        assert!(!allowed(&e.authz, "ana", Capability::Configure, "a1"));
        // Reported upward and audited in the same transaction.
        assert_eq!(
            count(
                &e.store,
                "SELECT COUNT(*) FROM outbox WHERE class = 'request'"
            ),
            1
        );
        assert_eq!(
            count(
                &e.store,
                "SELECT COUNT(*) FROM audit WHERE kind = 'delegation' AND outcome = 'ok'"
            ),
            1
        );
        g.id
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(DEVICE_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let e = open(dir.path(), site_state(Management::Independent));
    assert!(allowed(&e.authz, "ana", Capability::Control, "a2"));
    let listing = e.d.list(&uid("ana")).await.unwrap();
    assert_eq!(listing.grants.len(), 1);
    assert_eq!(listing.grants[0].id, id);
}

#[tokio::test]
async fn a_tampered_stored_grant_fails_its_signature_and_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), site_state(Management::Independent));
        e.d.create(&uid("adm"), req("ana", Role::Viewer, s_unit("a1"), None))
            .await
            .unwrap();
        // Someone with write access to the database upgrades the role.
        e.store
            .with_conn(|c| {
                c.execute(
                    "UPDATE local_grants SET payload = replace(payload, '\"viewer\"', '\"admin\"')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
    }
    let e = open(dir.path(), site_state(Management::Independent));
    assert!(!allowed(&e.authz, "ana", Capability::View, "a1"));
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'local_grant_rejected'"
        ),
        1
    );
}

#[tokio::test]
async fn delegation_above_ceiling_outside_scope_or_past_expiry_is_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Independent));
    let day = Duration::days(1);
    let cases: Vec<(&str, DelegationRequest, &str)> = vec![
        // technician's ceiling is control-only
        (
            "tech",
            req(
                "ana",
                Role::Technician,
                s_group("g-a"),
                Some(Duration::hours(1)),
            ),
            "above_ceiling",
        ),
        (
            "tech",
            req("ana", Role::Viewer, s_site(), Some(Duration::hours(1))),
            "forbidden",
        ),
        (
            "tech",
            req(
                "ana",
                Role::Viewer,
                s_group("g-b"),
                Some(Duration::hours(1)),
            ),
            "forbidden",
        ),
        (
            "tech",
            req("ana", Role::Viewer, s_unit("b1"), Some(Duration::hours(1))),
            "forbidden",
        ),
        (
            "tech",
            req("ana", Role::Viewer, s_unit("zz"), Some(Duration::hours(1))),
            "forbidden",
        ),
        // technician's own grant expires in a day
        (
            "tech",
            req("ana", Role::Viewer, s_unit("a1"), None),
            "expiry_required",
        ),
        (
            "tech",
            req(
                "ana",
                Role::Viewer,
                s_unit("a1"),
                Some(day + Duration::seconds(1)),
            ),
            "expiry_too_late",
        ),
        (
            "tech",
            req(
                "ana",
                Role::Viewer,
                s_unit("a1"),
                Some(Duration::seconds(-1)),
            ),
            "expiry_invalid",
        ),
        // viewers cannot delegate at all
        (
            "viewer",
            req("ana", Role::Viewer, s_unit("a1"), None),
            "forbidden",
        ),
        (
            "ana",
            req("bob", Role::Viewer, s_unit("a1"), None),
            "forbidden",
        ),
        // nobody delegates to themselves or to unknown users
        (
            "adm",
            req("adm", Role::Viewer, s_unit("a1"), None),
            "circular_delegation",
        ),
        (
            "adm",
            req("ghost", Role::Viewer, s_unit("a1"), None),
            "unknown_user",
        ),
    ];
    for (actor, r, code) in cases {
        let got = e.d.create(&uid(actor), r.clone()).await;
        assert_eq!(
            got.as_ref().map_err(|e| e.code()),
            Err(code),
            "{actor}: {r:?}"
        );
    }
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'delegation' AND outcome = 'denied'"
        ),
        12
    );
    assert_eq!(count(&e.store, "SELECT COUNT(*) FROM local_grants"), 0);
    // Within every limit it works.
    e.d.create(
        &uid("tech"),
        req("ana", Role::ControlOnly, s_unit("a1"), Some(day)),
    )
    .await
    .unwrap();
    assert!(allowed(&e.authz, "ana", Capability::Control, "a1"));
    // An admin may delegate admin.
    e.d.create(&uid("adm"), req("bob", Role::Admin, s_site(), None))
        .await
        .unwrap();
    assert!(allowed(&e.authz, "bob", Capability::ManageUsers, "c1"));
}

#[tokio::test]
async fn a_delegator_cannot_pass_on_a_unit_taken_away_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = site_state(Management::Independent);
    st.grants
        .push(grant("g-none", "adm", Role::None, s_unit("a2")));
    let e = open(dir.path(), st);
    let got =
        e.d.create(&uid("adm"), req("ana", Role::Viewer, s_group("g-a"), None))
            .await;
    assert_eq!(got.map_err(|e| e.code()), Err("above_own_role"));
    // The rest of the site is fine.
    e.d.create(&uid("adm"), req("ana", Role::Viewer, s_group("g-b"), None))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revoked_or_deactivated_delegator_takes_the_delegation_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Independent));
    e.d.create(&uid("adm"), req("ana", Role::ControlOnly, s_site(), None))
        .await
        .unwrap();
    assert!(allowed(&e.authz, "ana", Capability::Control, "b1"));
    let mut st = site_state(Management::Independent);
    st.seq = 2;
    st.revoked.insert(GrantId::new("g-adm").unwrap());
    e.authz.set_state(Arc::new(st));
    assert_eq!(
        e.authz.decide(
            &uid("ana"),
            Capability::Control,
            &Target::Unit(unit("b1")),
            NOW
        ),
        Decision::Deny(DenyReason::DelegatorInvalid)
    );
    let mut st = site_state(Management::Independent);
    st.seq = 3;
    st.users[0].active = false;
    e.authz.set_state(Arc::new(st));
    assert!(!allowed(&e.authz, "ana", Capability::View, "b1"));
    let mut st = site_state(Management::Independent);
    st.seq = 4;
    e.authz.set_state(Arc::new(st));
    assert!(allowed(&e.authz, "ana", Capability::View, "b1"));
}

#[tokio::test]
async fn revoking_a_delegation_ends_it_and_only_those_entitled_may() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Independent));
    let Created::Effective(g) =
        e.d.create(
            &uid("tech"),
            req("ana", Role::Viewer, s_unit("a1"), Some(Duration::hours(2))),
        )
        .await
        .unwrap()
    else {
        panic!("expected effective")
    };
    // A viewer elsewhere cannot revoke it, and learns nothing about it.
    assert_eq!(
        e.d.revoke(&uid("bob"), &g.id).await.map_err(|e| e.code()),
        Err("not_found")
    );
    assert!(allowed(&e.authz, "ana", Capability::View, "a1"));
    // An admin of the site can.
    e.d.revoke(&uid("adm"), &g.id).await.unwrap();
    assert_eq!(
        e.authz.decide(
            &uid("ana"),
            Capability::View,
            &Target::Unit(unit("a1")),
            NOW
        ),
        Decision::Deny(DenyReason::Revoked)
    );
    // Idempotent; the listing shows who revoked it.
    e.d.revoke(&uid("tech"), &g.id).await.unwrap();
    let l = e.d.list(&uid("tech")).await.unwrap();
    assert_eq!(l.grants[0].revoked_by.as_deref(), Some("adm"));
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM outbox WHERE msg_id LIKE '%-revoked'"
        ),
        1
    );
    assert_eq!(
        e.d.revoke(&uid("adm"), &GrantId::new("l-nope").unwrap())
            .await
            .map_err(|e| e.code()),
        Err("not_found")
    );
}

#[tokio::test]
async fn in_a_pro_site_a_delegation_is_only_a_pending_request_for_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Pro));
    let created =
        e.d.create(&uid("adm"), req("ana", Role::ControlOnly, s_site(), None))
            .await
            .unwrap();
    let Created::Pending(p) = created else {
        panic!("expected pending")
    };
    assert_eq!(p.kind, "delegation");
    assert!(!allowed(&e.authz, "ana", Capability::View, "a1"));
    assert_eq!(count(&e.store, "SELECT COUNT(*) FROM local_grants"), 0);
    let (topic, body): (String, Vec<u8>) = e
        .store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT topic, payload FROM outbox WHERE class = 'request'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .unwrap();
    assert_eq!(topic, TOPIC);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "pending");
    assert_eq!(v["user"], "ana");
    // The admin sees it; a bystander does not.
    assert_eq!(e.d.list(&uid("adm")).await.unwrap().requests.len(), 1);
    assert_eq!(e.d.list(&uid("bob")).await.unwrap().requests.len(), 0);
}

#[tokio::test]
async fn in_a_pro_site_holders_of_local_grants_may_not_delegate() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Independent));
    e.d.create(&uid("adm"), req("ana", Role::Admin, s_site(), None))
        .await
        .unwrap();
    // The site is taken over by a service business.
    let mut st = site_state(Management::Pro);
    st.seq = 2;
    e.authz.set_state(Arc::new(st));
    assert_eq!(
        e.d.create(&uid("ana"), req("bob", Role::Viewer, s_unit("a1"), None))
            .await
            .map_err(|e| e.code()),
        Err("not_cloud_grant")
    );
}

#[tokio::test]
async fn a_technician_cannot_lower_the_admin_and_the_admin_can_delete_what_they_tried() {
    // The attack from the field: on an independent site a technician "delegates" `none` and
    // `control-only` on a unit to the site admin, hoping the more specific grant wins.
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Independent));
    let all = |who: &str| {
        Capability::ALL
            .into_iter()
            .filter(|c| allowed(&e.authz, who, *c, "a1"))
            .count()
    };
    assert_eq!(all("adm"), 5);
    let exp = Some(NOW + Duration::hours(1));
    let none =
        e.d.create_for_email(
            &uid("tech"),
            "adm@example.com",
            Role::None,
            s_unit("a1"),
            exp,
        )
        .await;
    assert_eq!(none.map_err(|e| e.code()), Err("none_not_delegable"));
    assert_eq!(count(&e.store, "SELECT COUNT(*) FROM local_grants"), 0);
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'delegation' AND outcome = 'denied' \
             AND json_extract(detail, '$.reason') = 'none_not_delegable'"
        ),
        1
    );
    // A control-only delegation is within the technician's rights, so it is stored — and adds
    // nothing to someone who already holds more.
    let Created::Effective(g) =
        e.d.create_for_email(
            &uid("tech"),
            "ADM@example.com",
            Role::ControlOnly,
            s_unit("a1"),
            exp,
        )
        .await
        .unwrap()
    else {
        panic!("expected effective")
    };
    assert_eq!(all("adm"), 5);
    let ix = e.authz.index();
    let app = ix
        .applicable(&uid("adm"), &Target::Unit(unit("a1")), NOW)
        .unwrap();
    assert_eq!((app.role, app.grant.id.as_str()), (Role::Admin, "g-adm"));
    // The admin sees the delegation in their scope and deletes it.
    let l = e.d.list(&uid("adm")).await.unwrap();
    assert_eq!(
        l.grants.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![g.id.clone()]
    );
    e.d.revoke(&uid("adm"), &g.id).await.unwrap();
    assert!(e.authz.index().is_revoked(&g.id));
    assert_eq!(all("adm"), 5);
    // An unknown email answers exactly like a scope the technician may not manage… once the
    // technician is authorized, and not before.
    let unknown_forbidden =
        e.d.create_for_email(
            &uid("tech"),
            "ghost@example.com",
            Role::Viewer,
            s_unit("b1"),
            exp,
        )
        .await
        .map_err(|e| (e.code(), e.to_string()));
    let known_forbidden =
        e.d.create_for_email(
            &uid("tech"),
            "ana@example.com",
            Role::Viewer,
            s_unit("b1"),
            exp,
        )
        .await
        .map_err(|e| (e.code(), e.to_string()));
    assert_eq!(unknown_forbidden, known_forbidden);
    assert_eq!(
        unknown_forbidden.map(|_| ()),
        Err((
            "forbidden",
            "not allowed to manage users on `unit:b1`".to_string()
        ))
    );
}

#[tokio::test]
async fn any_user_may_ask_for_access_and_it_goes_to_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), site_state(Management::Pro));
    let p =
        e.d.access_request(
            &uid("bob"),
            s_unit("a1"),
            Role::ControlOnly,
            "need the\u{7} AC",
        )
        .await
        .unwrap();
    assert_eq!(
        (p.kind.as_str(), p.note.as_str()),
        ("access", "need the AC")
    );
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'access_request'"
        ),
        1
    );
    // An unknown unit is asked for like any unit the asker cannot see: the answer does not
    // tell whether it exists (the cloud resolves the request).
    let unknown =
        e.d.access_request(&uid("bob"), s_unit("zz"), Role::Viewer, "")
            .await
            .unwrap();
    assert_eq!(
        (unknown.kind.as_str(), unknown.status.as_str()),
        ("access", "pending")
    );
    assert_eq!(
        e.d.access_request(&uid("bob"), s_site(), Role::Viewer, &"x".repeat(501))
            .await
            .map_err(|e| e.code()),
        Err("note_too_long")
    );
    for _ in 2..MAX_OPEN_REQUESTS_PER_USER {
        e.d.access_request(&uid("bob"), s_site(), Role::Viewer, "")
            .await
            .unwrap();
    }
    assert_eq!(
        e.d.access_request(&uid("bob"), s_site(), Role::Viewer, "")
            .await
            .map_err(|e| e.code()),
        Err("too_many_requests")
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const USERS: [&str; 4] = ["root", "u1", "u2", "u3"];
    const UNITS: [&str; 4] = ["a1", "a2", "b1", "c1"];

    fn arb_scope() -> impl Strategy<Value = Scope> {
        prop::sample::select(vec![
            s_site(),
            s_group("g-a"),
            s_group("g-b"),
            s_unit("a1"),
            s_unit("a2"),
            s_unit("b1"),
            s_unit("c1"),
        ])
    }
    fn arb_role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }
    fn arb_exp() -> impl Strategy<Value = Option<i64>> {
        prop::option::of(1i64..200)
    }

    fn allow(
        ix: &crate::authz::Index,
        who: &str,
        cap: Capability,
        u: &str,
        at: OffsetDateTime,
    ) -> bool {
        ix.decide(&uid(who), cap, &Target::Unit(unit(u)), at)
            .is_allow()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever sequence of delegations is attempted (each checked by the same rules as the
        /// API), no other user ever holds a capability on a unit that the root delegator — the
        /// only holder of cloud grants — lacks there, at any time, even after a revocation.
        #[test]
        fn no_delegation_yields_more_than_the_root_delegator_holds(
            root in prop::collection::vec((arb_role(), arb_scope(), arb_exp(), arb_exp()), 1..5),
            steps in prop::collection::vec((0usize..4, 0usize..4, arb_role(), arb_scope(), arb_exp()), 0..14),
            revoke in prop::option::of(0usize..4),
        ) {
            let grants: Vec<_> = root.iter().enumerate().map(|(i, (r, s, e, nb))| {
                let mut g = grant(&format!("c{i}"), "root", *r, s.clone());
                // Some root grants start later (a restriction that arrives after delegating).
                g.not_before = nb.filter(|h| h % 3 == 0).map(|h| NOW + Duration::hours(h / 2));
                g.expires_at = e.map(|h| NOW + Duration::hours(h));
                g
            }).collect();
            let mut inp: Inputs = inputs(state(&USERS, grants), vec![]);
            for (n, (by, to, role, scope, exp)) in steps.iter().enumerate() {
                let ix = crate::authz::Index::build(&inp);
                let r = DelegationRequest {
                    user: uid(USERS[*to]), role: *role, scope: scope.clone(),
                    not_before: None, expires_at: exp.map(|h| NOW + Duration::hours(h)),
                };
                if let Ok(parent) = Delegations::check(&ix, &uid(USERS[*by]), &r, NOW) {
                    let mut g = local(&format!("l{n}"), USERS[*to], *role, scope.clone(), USERS[*by], parent.as_str());
                    g.expires_at = r.expires_at;
                    inp.local.push(g);
                }
            }
            let mut variants = vec![crate::authz::Index::build(&inp)];
            if let Some(k) = revoke {
                let mut st = (*inp.state).clone();
                st.revoked.insert(GrantId::new(format!("c{k}")).unwrap());
                let mut inp2 = inp.clone();
                inp2.state = Arc::new(st);
                variants.push(crate::authz::Index::build(&inp2));
            }
            for ix in &variants {
                for at in [NOW, NOW + Duration::hours(2), NOW + Duration::hours(100), NOW + Duration::days(30)] {
                    for u in UNITS {
                        for cap in Capability::ALL {
                            let root_has = allow(ix, "root", cap, u, at);
                            for who in &USERS[1..] {
                                prop_assert!(
                                    !allow(ix, who, cap, u, at) || root_has,
                                    "{who} has {cap} on {u} at {at} but root does not"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

mod additive {
    //! Local operations (delegate, revoke — by anyone) never change what users hold from the
    //! cloud, and nobody ever exceeds a delegator, judged at decision time.
    use super::*;
    use crate::model::GroupId;
    use proptest::prelude::*;

    const USERS: [&str; 6] = ["u0", "u1", "u2", "u3", "u4", "u5"];
    const UNITS: [&str; 4] = ["a1", "a2", "b1", "c1"];

    fn arb_scope() -> impl Strategy<Value = Scope> {
        prop::sample::select(vec![
            s_site(),
            s_group("g-a"),
            s_group("g-b"),
            s_unit("a1"),
            s_unit("a2"),
            s_unit("b1"),
            s_unit("c1"),
        ])
    }
    fn arb_role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Delegate {
            by: usize,
            to: usize,
            role: Role,
            scope: Scope,
            exp: Option<i64>,
        },
        Revoke(usize),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..6, 0usize..6, arb_role(), arb_scope(), prop::option::of(1i64..200))
                .prop_map(|(by, to, role, scope, exp)| Op::Delegate { by, to, role, scope, exp }),
            1 => (0usize..64).prop_map(Op::Revoke),
        ]
    }

    /// What happens to the cloud grants after the delegations were made.
    #[derive(Debug, Clone)]
    enum Later {
        Nothing,
        Revoke(usize),
        Lower(usize, Role),
        /// Every cloud grant of the delegator of local grant k is lowered to at most the role.
        LowerDelegator(usize, Role),
    }

    fn targets() -> Vec<(Target, Scope)> {
        let mut t: Vec<(Target, Scope)> = UNITS
            .iter()
            .map(|u| (Target::Unit(unit(u)), s_unit(u)))
            .collect();
        for g in ["g-a", "g-b"] {
            let id = GroupId::new(g).unwrap();
            t.push((Target::Group(id), s_group(g)));
        }
        t.push((Target::Site, s_site()));
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(250))]

        #[test]
        fn local_operations_never_change_cloud_capabilities_and_never_exceed_the_delegator(
            cloud in prop::collection::vec(
                (0usize..6, arb_role(), arb_scope(), prop::option::of(1i64..200)), 3..14),
            ops in prop::collection::vec(arb_op(), 0..24),
            later in prop_oneof![
                Just(Later::Nothing),
                (0usize..14).prop_map(Later::Revoke),
                ((0usize..14), arb_role()).prop_map(|(i, r)| Later::Lower(i, r)),
                ((0usize..64), arb_role()).prop_map(|(k, r)| Later::LowerDelegator(k, r)),
            ],
        ) {
            let grants: Vec<_> = cloud.iter().enumerate().map(|(i, (u, r, s, e))| {
                let mut g = grant(&format!("c{i}"), USERS[*u], *r, s.clone());
                g.expires_at = e.map(|h| NOW + Duration::hours(h));
                g
            }).collect();
            let mut inp: Inputs = inputs(state(&USERS, grants), vec![]);
            let mut made = 0usize;
            for (n, op) in ops.iter().enumerate() {
                match op {
                    Op::Delegate { by, to, role, scope, exp } => {
                        let ix = crate::authz::Index::build(&inp);
                        let r = DelegationRequest {
                            user: uid(USERS[*to]), role: *role, scope: scope.clone(),
                            not_before: None, expires_at: exp.map(|h| NOW + Duration::hours(h)),
                        };
                        let checked = Delegations::check(&ix, &uid(USERS[*by]), &r, NOW);
                        if *role == Role::None {
                            prop_assert!(checked.is_err(), "a local `none` was accepted");
                        }
                        if let Ok(parent) = checked {
                            let mut g = local(&format!("l{n}"), USERS[*to], *role, scope.clone(),
                                USERS[*by], parent.as_str());
                            g.expires_at = r.expires_at;
                            inp.local.push(g);
                            made += 1;
                        }
                    }
                    // Revocation by anyone: a superset of what any user may revoke.
                    Op::Revoke(k) if made > 0 => {
                        let id = inp.local[k % made].id.clone();
                        inp.local_revoked.insert(id);
                    }
                    Op::Revoke(_) => {}
                }
            }
            // Then the cloud changes its mind about someone (possibly a delegator).
            let mut st = (*inp.state).clone();
            st.seq += 1;
            match later {
                Later::Nothing => {}
                Later::Revoke(i) => {
                    st.revoked.insert(GrantId::new(format!("c{}", i % cloud.len())).unwrap());
                }
                Later::Lower(i, r) => {
                    let g = &mut st.grants[i % cloud.len()];
                    g.role = g.role.min(r);
                }
                Later::LowerDelegator(_, _) if made == 0 => {}
                Later::LowerDelegator(k, r) => {
                    if let crate::access::Origin::Local { delegator, .. } = &inp.local[k % made].origin {
                        for g in st.grants.iter_mut().filter(|g| g.user == *delegator) {
                            g.role = g.role.min(r);
                        }
                    }
                }
            }
            inp.state = Arc::new(st);
            let with = crate::authz::Index::build(&inp);
            let mut bare = inp.clone();
            bare.local.clear();
            bare.local_revoked.clear();
            let without = crate::authz::Index::build(&bare);
            for at in [NOW, NOW + Duration::hours(2), NOW + Duration::hours(100), NOW + Duration::days(30)] {
                for (target, tscope) in targets() {
                    for who in USERS {
                        for cap in Capability::ALL {
                            let has = with.decide(&uid(who), cap, &target, at).is_allow();
                            let cloud_has = without.decide(&uid(who), cap, &target, at).is_allow();
                            // 1. Nothing local takes a cloud-derived capability away.
                            prop_assert!(has || !cloud_has,
                                "{who} lost {cap} on {target:?} at {at} through local grants");
                            // 2. Anything beyond the cloud's comes from a delegation in force
                            //    whose delegator holds the capability there right now.
                            if has && !cloud_has {
                                let backed = inp.local.iter().any(|g| {
                                    let crate::access::Origin::Local { delegator, .. } = &g.origin
                                    else { return false };
                                    g.user.as_str() == who
                                        && !inp.local_revoked.contains(&g.id)
                                        && g.expires_at.is_none_or(|e| at < e)
                                        && g.role.capabilities().contains(cap)
                                        && with.scope_within(&tscope, &g.scope)
                                        && with.decide(delegator, cap, &target, at).is_allow()
                                });
                                prop_assert!(backed,
                                    "{who} holds {cap} on {target:?} at {at} beyond the cloud \
                                     with no delegator holding it");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A pro site whose clock the test moves.
fn open_with_clock(dir: &Path, st: AccessState) -> (Env, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NOW));
    let shared: SharedClock = clock.clone();
    let store = Store::open_in(dir).unwrap();
    let audit = Audit::new(store.clone(), shared.clone(), None);
    let (authz, writers, _) = crate::authz::owner::Access::staged(inputs(st, vec![]));
    let d = Delegations::new(
        store.clone(),
        audit,
        writers.local,
        shared,
        dir,
        Some(TOPIC.into()),
    )
    .unwrap();
    (Env { authz, d, store }, clock)
}

fn statuses(listing: &Listing) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = listing
        .requests
        .iter()
        .map(|r| (r.id.clone(), r.status.clone()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn access_requests_are_granted_or_denied_by_a_later_bundle_and_expire_after_thirty_days() {
    let dir = tempfile::tempdir().unwrap();
    let st = site_state(Management::Pro);
    let (e, clock) = open_with_clock(dir.path(), st.clone());
    let ana = uid("ana");
    let r1 =
        e.d.access_request(&ana, s_unit("a1"), Role::Viewer, "")
            .await
            .unwrap()
            .id;
    let r2 =
        e.d.access_request(&ana, s_group("g-a"), Role::ControlOnly, "")
            .await
            .unwrap()
            .id;
    let r3 =
        e.d.access_request(&ana, s_unit("b1"), Role::ControlOnly, "")
            .await
            .unwrap()
            .id;

    // The next bundle gives ana viewer on the whole site (covers a1 as asked; not control-only on
    // g-a or b1) and denies r2; r3 is not mentioned.
    let mut next = st.clone();
    next.seq += 1;
    next.grants
        .push(grant("g-ana", "ana", Role::Viewer, s_site()));
    next.requests_denied.insert(r2.clone());
    e.authz.set_state(Arc::new(next.clone()));
    let mut done = e.d.resolve_requests(&next).unwrap();
    done.sort();
    let mut want = vec![(r1.clone(), "granted"), (r2.clone(), "denied")];
    want.sort();
    assert_eq!(done, want);
    // Idempotent: nothing more to resolve.
    assert_eq!(e.d.resolve_requests(&next).unwrap(), vec![]);
    let mut want = vec![
        (r1.clone(), "granted".to_string()),
        (r2.clone(), "denied".to_string()),
        (r3.clone(), "pending".to_string()),
    ];
    want.sort();
    assert_eq!(statuses(&e.d.list(&ana).await.unwrap()), want);

    // Thirty days later the unanswered request is listed as expired at once and stored as such
    // by the next sweep.
    clock.advance(REQUEST_TTL);
    let listed = statuses(&e.d.list(&ana).await.unwrap());
    assert!(listed.contains(&(r3.clone(), "expired".to_string())));
    assert_eq!(
        e.d.resolve_requests(&next).unwrap(),
        vec![(r3.clone(), "expired")]
    );
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM access_requests WHERE status = 'pending'"
        ),
        0
    );
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM audit WHERE kind = 'access_request_resolved'"
        ),
        3
    );
    // Each resolution is reported upward once.
    assert_eq!(
        count(
            &e.store,
            "SELECT COUNT(*) FROM outbox WHERE class = 'request' AND (msg_id LIKE '%-granted' OR msg_id LIKE '%-denied' OR msg_id LIKE '%-expired')"
        ),
        3
    );
    // After a restart the statuses and resolution times are the same.
    let before = e.d.list(&ana).await.unwrap().requests;
    drop(e);
    let (e, _) = open_with_clock(dir.path(), st);
    clock.advance(time::Duration::ZERO);
    let after = e.d.list(&ana).await.unwrap().requests;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&b.id, &b.resolved_at.is_some()),
            (&a.id, &a.resolved_at.is_some())
        );
    }
}

#[tokio::test]
async fn expired_requests_no_longer_count_against_the_open_request_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (e, clock) = open_with_clock(dir.path(), site_state(Management::Pro));
    let bob = uid("bob");
    for _ in 0..MAX_OPEN_REQUESTS_PER_USER {
        e.d.access_request(&bob, s_site(), Role::Viewer, "")
            .await
            .unwrap();
    }
    assert_eq!(
        e.d.access_request(&bob, s_site(), Role::Viewer, "")
            .await
            .unwrap_err(),
        DelegationError::TooManyRequests
    );
    clock.advance(REQUEST_TTL);
    assert!(
        e.d.access_request(&bob, s_site(), Role::Viewer, "")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn requests_are_listed_to_their_requester_and_to_managers_of_their_scope_only() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = open_with_clock(dir.path(), site_state(Management::Pro));
    let r =
        e.d.access_request(&uid("ana"), s_unit("b1"), Role::Viewer, "")
            .await
            .unwrap()
            .id;
    let ids = |l: Listing| l.requests.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(e.d.list(&uid("ana")).await.unwrap()), vec![r.clone()]);
    // adm manages the site; tech manages only g-a (b1 is in g-b); bob and the viewer manage nothing.
    assert_eq!(ids(e.d.list(&uid("adm")).await.unwrap()), vec![r]);
    for who in ["tech", "bob", "viewer"] {
        assert!(ids(e.d.list(&uid(who)).await.unwrap()).is_empty(), "{who}");
    }
}
