//! Scenario tables and invariants for the decision.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;
use crate::access::{AccessState, Grant, Origin, Policy, User};
use crate::model::{
    CapSet, Capability, GrantId, GroupId, Management, Role, Scope, SiteId, UnitId, UserId,
};

pub(crate) const NOW: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

pub(crate) fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
pub(crate) fn unit(s: &str) -> UnitId {
    UnitId::new(s).unwrap()
}
pub(crate) fn group(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}
pub(crate) fn s_site() -> Scope {
    Scope::Site(SiteId::new("s-1").unwrap())
}
pub(crate) fn s_group(g: &str) -> Scope {
    Scope::Group(group(g))
}
pub(crate) fn s_unit(u: &str) -> Scope {
    Scope::Unit(unit(u))
}

pub(crate) fn user(id: &str) -> User {
    User {
        id: uid(id),
        email: format!("{id}@example.com"),
        name: id.to_string(),
        active: true,
        password: None,
        business: None,
        owner: false,
    }
}

pub(crate) fn grant(id: &str, who: &str, role: Role, scope: Scope) -> Grant {
    Grant {
        id: GrantId::new(id).unwrap(),
        user: uid(who),
        role,
        scope,
        not_before: None,
        expires_at: None,
        origin: Origin::Cloud,
    }
}

pub(crate) fn local(
    id: &str,
    who: &str,
    role: Role,
    scope: Scope,
    by: &str,
    parent: &str,
) -> Grant {
    Grant {
        origin: Origin::Local {
            delegator: uid(by),
            parent: GrantId::new(parent).unwrap(),
        },
        ..grant(id, who, role, scope)
    }
}

/// Inventory: group g-a = {a1, a2}, group g-b = {b1}, ungrouped c1.
pub(crate) fn inventory() -> Vec<(UnitId, Option<GroupId>)> {
    vec![
        (unit("a1"), Some(group("g-a"))),
        (unit("a2"), Some(group("g-a"))),
        (unit("b1"), Some(group("g-b"))),
        (unit("c1"), None),
    ]
}

pub(crate) fn state(users: &[&str], grants: Vec<Grant>) -> AccessState {
    AccessState {
        site: Some(SiteId::new("s-1").unwrap()),
        seq: 1,
        issued_at: Some(NOW - Duration::hours(1)),
        last_trusted_time: Some(NOW - Duration::hours(1)),
        policy: Policy {
            management: Management::Independent,
            features: CapSet::ALL,
            max_offline: BTreeMap::new(),
        },
        users: users.iter().map(|u| user(u)).collect(),
        grants,
        revoked: HashSet::new(),
        requests_denied: HashSet::new(),
    }
}

pub(crate) fn inputs(state: AccessState, local: Vec<Grant>) -> Inputs {
    Inputs {
        site: Some(SiteId::new("s-1").unwrap()),
        state: Arc::new(state),
        local,
        local_revoked: HashSet::new(),
        inventory: inventory(),
        suspended: Vec::new(),
    }
}

fn build(state: AccessState) -> Index {
    Index::build(&inputs(state, Vec::new()))
}

use Capability::{Configure, Control, Diagnose, ManageUsers, View};
use Decision::{Allow, Deny};
use DenyReason as R;

#[test]
fn every_role_capability_and_scope_level_decides_as_the_role_table_says() {
    let levels = [
        ("site", s_site()),
        ("group", s_group("g-a")),
        ("unit", s_unit("a1")),
    ];
    let mut checked = 0;
    for role in Role::ALL {
        for (level, scope) in &levels {
            let ix = build(state(&["u"], vec![grant("g1", "u", role, scope.clone())]));
            for cap in Capability::ALL {
                let want = if role.capabilities().contains(cap) {
                    Allow
                } else {
                    Deny(R::RoleLacks)
                };
                let got = ix.decide(&uid("u"), cap, &Target::Unit(unit("a1")), NOW);
                assert_eq!(got, want, "{role} on {level}, {cap} on a1");
                // A unit outside the scope is never covered (except by a site grant).
                let outside = ix.decide(&uid("u"), cap, &Target::Unit(unit("b1")), NOW);
                let want_outside = if *level == "site" {
                    want
                } else {
                    Deny(R::NoGrant)
                };
                assert_eq!(outside, want_outside, "{role} on {level}, {cap} on b1");
                // Group and site targets see only grants at that level or above.
                let on_group = ix.decide(&uid("u"), cap, &Target::Group(group("g-a")), NOW);
                let want_group = if *level == "unit" {
                    Deny(R::NoGrant)
                } else {
                    want
                };
                assert_eq!(
                    on_group, want_group,
                    "{role} on {level}, {cap} on group g-a"
                );
                let on_site = ix.decide(&uid("u"), cap, &Target::Site, NOW);
                let want_site = if *level == "site" {
                    want
                } else {
                    Deny(R::NoGrant)
                };
                assert_eq!(on_site, want_site, "{role} on {level}, {cap} on site");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * 3 * 5);
}

#[test]
fn the_package_ceiling_removes_capabilities_from_every_role() {
    for features in [
        CapSet::of(&[View]),
        CapSet::of(&[View, Control]),
        CapSet::of(&[View, Control, Diagnose]),
        CapSet::EMPTY,
    ] {
        for role in Role::ALL {
            let mut st = state(&["u"], vec![grant("g1", "u", role, s_site())]);
            st.policy.features = features;
            let ix = build(st);
            for cap in Capability::ALL {
                let want = match (role.capabilities().contains(cap), features.contains(cap)) {
                    (false, _) => Deny(R::RoleLacks),
                    (true, false) => Deny(R::PackageExcludes),
                    (true, true) => Allow,
                };
                assert_eq!(
                    ix.decide(&uid("u"), cap, &Target::Unit(unit("c1")), NOW),
                    want,
                    "{role} {cap} with {features:?}"
                );
            }
        }
    }
}

/// One named scenario: grants and a state tweak, then a question and its expected answer.
struct Case {
    name: &'static str,
    grants: Vec<Grant>,
    local: Vec<Grant>,
    tweak: fn(&mut AccessState),
    ask: (&'static str, Capability, Target),
    at: OffsetDateTime,
    want: Decision,
}

fn no_tweak(_: &mut AccessState) {}

fn expiring(mut g: Grant, nb: Option<OffsetDateTime>, exp: Option<OffsetDateTime>) -> Grant {
    g.not_before = nb;
    g.expires_at = exp;
    g
}

fn cases() -> Vec<Case> {
    let a1 = || Target::Unit(unit("a1"));
    let a2 = || Target::Unit(unit("a2"));
    vec![
        Case {
            name: "none on one unit takes it away under a site-wide control-only grant",
            grants: vec![
                grant("g1", "u", Role::ControlOnly, s_site()),
                grant("g2", "u", Role::None, s_unit("a1")),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::RoleLacks),
        },
        Case {
            name: "the sibling of a none unit keeps the site role",
            grants: vec![
                grant("g1", "u", Role::ControlOnly, s_site()),
                grant("g2", "u", Role::None, s_unit("a1")),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", Control, a2()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "none on a group restricts its units under a site admin grant",
            grants: vec![
                grant("g1", "u", Role::Admin, s_site()),
                grant("g2", "u", Role::None, s_group("g-a")),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, a2()),
            at: NOW,
            want: Deny(R::RoleLacks),
        },
        Case {
            name: "a unit grant beats a group grant even when lower",
            grants: vec![
                grant("g1", "u", Role::Technician, s_group("g-a")),
                grant("g2", "u", Role::Viewer, s_unit("a1")),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", Control, a1()),
            at: NOW,
            want: Deny(R::RoleLacks),
        },
        Case {
            name: "a unit grant under a none group restores that unit",
            grants: vec![
                grant("g1", "u", Role::None, s_group("g-a")),
                grant("g2", "u", Role::ControlOnly, s_unit("a1")),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", Control, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "among equally specific grants the highest role wins",
            grants: vec![
                grant("g1", "u", Role::Viewer, s_site()),
                grant("g2", "u", Role::Admin, s_site()),
                grant("g3", "u", Role::None, s_site()),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", Configure, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "an expired unit grant falls back to the site grant",
            grants: vec![
                grant("g1", "u", Role::Viewer, s_site()),
                expiring(
                    grant("g2", "u", Role::Admin, s_unit("a1")),
                    None,
                    Some(NOW - Duration::minutes(1)),
                ),
            ],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", Control, a1()),
            at: NOW,
            want: Deny(R::RoleLacks),
        },
        Case {
            name: "an expired only grant denies as expired",
            grants: vec![expiring(
                grant("g1", "u", Role::Admin, s_site()),
                None,
                Some(NOW),
            )],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::Expired),
        },
        Case {
            name: "a grant that is not valid yet denies",
            grants: vec![expiring(
                grant("g1", "u", Role::Admin, s_site()),
                Some(NOW + Duration::minutes(5)),
                None,
            )],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::NotYetValid),
        },
        Case {
            name: "a grant becomes valid at its not_before",
            grants: vec![expiring(
                grant("g1", "u", Role::Admin, s_site()),
                Some(NOW),
                Some(NOW + Duration::hours(1)),
            )],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "setting the clock back does not revive an expired grant",
            grants: vec![expiring(
                grant("g1", "u", Role::Admin, s_site()),
                None,
                Some(NOW - Duration::days(1)),
            )],
            local: vec![],
            tweak: |s| s.last_trusted_time = Some(NOW),
            ask: ("u", View, a1()),
            at: NOW - Duration::days(10),
            want: Deny(R::Expired),
        },
        Case {
            name: "a revoked grant denies as revoked",
            grants: vec![grant("g1", "u", Role::Admin, s_site())],
            local: vec![],
            tweak: |s| {
                s.revoked.insert(GrantId::new("g1").unwrap());
            },
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::Revoked),
        },
        Case {
            name: "a revoked unit restriction no longer restricts",
            grants: vec![
                grant("g1", "u", Role::ControlOnly, s_site()),
                grant("g2", "u", Role::None, s_unit("a1")),
            ],
            local: vec![],
            tweak: |s| {
                s.revoked.insert(GrantId::new("g2").unwrap());
            },
            ask: ("u", Control, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "a deactivated user is denied everything",
            grants: vec![grant("g1", "u", Role::Admin, s_site())],
            local: vec![],
            tweak: |s| s.users[0].active = false,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::UserInactive),
        },
        Case {
            name: "an unknown user is denied",
            grants: vec![grant("g1", "u", Role::Admin, s_site())],
            local: vec![],
            tweak: no_tweak,
            ask: ("nobody", View, a1()),
            at: NOW,
            want: Deny(R::UnknownUser),
        },
        Case {
            name: "a unit outside the inventory is denied even to a site admin",
            grants: vec![grant("g1", "u", Role::Admin, s_site())],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, Target::Unit(unit("zz"))),
            at: NOW,
            want: Deny(R::UnknownUnit),
        },
        Case {
            name: "a group outside the inventory is denied",
            grants: vec![grant("g1", "u", Role::Admin, s_site())],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, Target::Group(group("g-zz"))),
            at: NOW,
            want: Deny(R::UnknownGroup),
        },
        Case {
            name: "a grant for another site covers nothing",
            grants: vec![grant(
                "g1",
                "u",
                Role::Admin,
                Scope::Site(SiteId::new("s-2").unwrap()),
            )],
            local: vec![],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::NoGrant),
        },
        Case {
            name: "a technician stops working after max_offline without a fresh bundle",
            grants: vec![grant("g1", "u", Role::Technician, s_site())],
            local: vec![],
            tweak: |s| {
                s.policy
                    .max_offline
                    .insert(Role::Technician, Duration::days(30));
                s.issued_at = Some(NOW - Duration::days(31));
            },
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::OfflineTooLong),
        },
        Case {
            name: "a viewer grant keeps working when the technician grant is offline too long",
            grants: vec![
                grant("g1", "u", Role::Technician, s_unit("a1")),
                grant("g2", "u", Role::Viewer, s_site()),
            ],
            local: vec![],
            tweak: |s| {
                s.policy
                    .max_offline
                    .insert(Role::Technician, Duration::days(30));
                s.issued_at = Some(NOW - Duration::days(31));
            },
            ask: ("u", View, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "a technician within max_offline still works",
            grants: vec![grant("g1", "u", Role::Technician, s_site())],
            local: vec![],
            tweak: |s| {
                s.policy
                    .max_offline
                    .insert(Role::Technician, Duration::days(30));
                s.issued_at = Some(NOW - Duration::days(29));
            },
            ask: ("u", Configure, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "a diagnose point is hidden from control-only",
            grants: vec![grant("g1", "u", Role::ControlOnly, s_site())],
            local: vec![],
            tweak: no_tweak,
            ask: (
                "u",
                View,
                Target::Point {
                    unit: unit("a1"),
                    required: Diagnose,
                },
            ),
            at: NOW,
            want: Deny(R::RoleLacks),
        },
        Case {
            name: "a diagnose point is readable by a technician",
            grants: vec![grant("g1", "u", Role::Technician, s_site())],
            local: vec![],
            tweak: no_tweak,
            ask: (
                "u",
                View,
                Target::Point {
                    unit: unit("a1"),
                    required: Diagnose,
                },
            ),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "a delegation works while its delegator holds the access",
            grants: vec![grant("g1", "boss", Role::Admin, s_site())],
            local: vec![local(
                "l1",
                "u",
                Role::ControlOnly,
                s_group("g-a"),
                "boss",
                "g1",
            )],
            tweak: no_tweak,
            ask: ("u", Control, a1()),
            at: NOW,
            want: Allow,
        },
        Case {
            name: "a delegation stops when its parent grant is revoked",
            grants: vec![grant("g1", "boss", Role::Admin, s_site())],
            local: vec![local(
                "l1",
                "u",
                Role::ControlOnly,
                s_group("g-a"),
                "boss",
                "g1",
            )],
            tweak: |s| {
                s.revoked.insert(GrantId::new("g1").unwrap());
            },
            ask: ("u", Control, a1()),
            at: NOW,
            want: Deny(R::DelegatorInvalid),
        },
        Case {
            name: "a delegation stops when its parent grant expires",
            grants: vec![expiring(
                grant("g1", "boss", Role::Admin, s_site()),
                None,
                Some(NOW - Duration::seconds(1)),
            )],
            local: vec![local(
                "l1",
                "u",
                Role::ControlOnly,
                s_group("g-a"),
                "boss",
                "g1",
            )],
            tweak: no_tweak,
            ask: ("u", Control, a1()),
            at: NOW,
            want: Deny(R::DelegatorInvalid),
        },
        Case {
            name: "a delegation stops when its delegator is deactivated",
            grants: vec![grant("g1", "boss", Role::Admin, s_site())],
            local: vec![local(
                "l1",
                "u",
                Role::ControlOnly,
                s_group("g-a"),
                "boss",
                "g1",
            )],
            tweak: |s| {
                if let Some(b) = s.users.iter_mut().find(|u| u.id.as_str() == "boss") {
                    b.active = false;
                }
            },
            ask: ("u", Control, a1()),
            at: NOW,
            want: Deny(R::DelegatorInvalid),
        },
        Case {
            name: "a delegation is capped when its delegator loses a unit",
            grants: vec![
                grant("g1", "boss", Role::Admin, s_site()),
                grant("g2", "boss", Role::None, s_unit("a1")),
            ],
            local: vec![local("l1", "u", Role::ControlOnly, s_site(), "boss", "g1")],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::DelegatorInvalid),
        },
        Case {
            name: "a delegation capped by its delegator keeps what the delegator still has",
            grants: vec![
                grant("g1", "boss", Role::Admin, s_site()),
                grant("g2", "boss", Role::Viewer, s_unit("a1")),
            ],
            local: vec![local("l1", "u", Role::ControlOnly, s_site(), "boss", "g1")],
            tweak: no_tweak,
            ask: ("u", Control, a1()),
            at: NOW,
            want: Deny(R::RoleLacks),
        },
        Case {
            name: "a delegation whose parent belongs to someone else is dropped",
            grants: vec![
                grant("g1", "other", Role::Admin, s_site()),
                grant("g0", "boss", Role::Viewer, s_site()),
            ],
            local: vec![local("l1", "u", Role::Admin, s_site(), "boss", "g1")],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::NoGrant),
        },
        Case {
            name: "a delegation wider than its parent grant is dropped",
            grants: vec![grant("g1", "boss", Role::Admin, s_group("g-b"))],
            local: vec![local(
                "l1",
                "u",
                Role::ControlOnly,
                s_group("g-a"),
                "boss",
                "g1",
            )],
            tweak: no_tweak,
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::NoGrant),
        },
        Case {
            name: "a two-step delegation works and dies with its root",
            grants: vec![grant("g1", "boss", Role::Admin, s_site())],
            local: vec![
                local("l1", "mid", Role::Admin, s_group("g-a"), "boss", "g1"),
                local("l2", "u", Role::Viewer, s_unit("a1"), "mid", "l1"),
            ],
            tweak: |s| {
                s.revoked.insert(GrantId::new("g1").unwrap());
            },
            ask: ("u", View, a1()),
            at: NOW,
            want: Deny(R::DelegatorInvalid),
        },
    ]
}

#[test]
fn scenario_table_decides_as_written() {
    let mut failures = Vec::new();
    for c in cases() {
        let mut st = state(&["u", "boss", "mid", "other"], c.grants.clone());
        (c.tweak)(&mut st);
        let ix = Index::build(&inputs(st, c.local.clone()));
        let (who, cap, target) = &c.ask;
        let got = ix.decide(&uid(who), *cap, target, c.at);
        if got != c.want {
            failures.push(format!("{}: got {got:?}, want {:?}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_local_grant_only_ever_adds_to_what_a_user_holds() {
    // adm: admin on the site from the cloud. tech: technician on the site from the cloud.
    // u: control-only on the site by delegation from adm.
    let st = state(
        &["adm", "tech", "u"],
        vec![
            grant("g-adm", "adm", Role::Admin, s_site()),
            grant("g-tech", "tech", Role::Technician, s_site()),
        ],
    );
    let local = vec![
        // A `none` from an older store, a lower role on a unit, and a lower role by the admin
        // for the technician: none of them take anything away.
        local("l-none", "adm", Role::None, s_unit("a1"), "tech", "g-tech"),
        local("l-co", "adm", Role::Viewer, s_unit("a1"), "tech", "g-tech"),
        local("l-tv", "tech", Role::Viewer, s_group("g-a"), "adm", "g-adm"),
        local("l-u", "u", Role::ControlOnly, s_site(), "adm", "g-adm"),
        local("l-u2", "u", Role::Viewer, s_unit("a1"), "tech", "g-tech"),
    ];
    let ix = Index::build(&inputs(st, local));
    let a1 = Target::Unit(unit("a1"));
    for cap in Capability::ALL {
        assert_eq!(ix.decide(&uid("adm"), cap, &a1, NOW), Allow, "adm {cap}");
        assert_eq!(ix.decide(&uid("tech"), cap, &a1, NOW), Allow, "tech {cap}");
    }
    // The more specific, lower delegation does not lower the wider, higher one either.
    assert_eq!(ix.decide(&uid("u"), Control, &a1, NOW), Allow);
    assert_eq!(ix.decide(&uid("u"), Diagnose, &a1, NOW), Deny(R::RoleLacks));
    // The admin's deciding grant is the cloud's, and the stored `none` was left out.
    let app = ix.applicable(&uid("adm"), &a1, NOW).unwrap();
    assert_eq!((app.role, app.grant.id.as_str()), (Role::Admin, "g-adm"));
    assert!(ix.dropped().iter().any(|d| d.grant.as_str() == "l-none"));
}

#[test]
fn a_delegation_adds_on_a_unit_the_cloud_took_away_but_only_up_to_the_delegator() {
    // u: none on a1 from the cloud; boss (technician on the site) delegates control-only on
    // g-a: the delegation adds a1 back, up to what boss holds; when boss is lowered to viewer,
    // u is capped to viewer at once.
    let mk = |boss_role| {
        state(
            &["u", "boss"],
            vec![
                grant("g1", "u", Role::None, s_unit("a1")),
                grant("g2", "boss", boss_role, s_site()),
            ],
        )
    };
    let local = vec![local(
        "l1",
        "u",
        Role::ControlOnly,
        s_group("g-a"),
        "boss",
        "g2",
    )];
    let a1 = Target::Unit(unit("a1"));
    let ix = Index::build(&inputs(mk(Role::Technician), local.clone()));
    assert_eq!(ix.decide(&uid("u"), Control, &a1, NOW), Allow);
    let ix = Index::build(&inputs(mk(Role::Viewer), local));
    assert_eq!(ix.decide(&uid("u"), View, &a1, NOW), Allow);
    assert_eq!(ix.decide(&uid("u"), Control, &a1, NOW), Deny(R::RoleLacks));
}

#[test]
fn a_dense_web_of_delegations_is_decided_within_the_lookup_budget() {
    // Ten technicians (cloud, site) later lowered to viewer on a1 by the cloud, each having
    // delegated control-only on the site to every other one and to x: 110 delegations, 10^4
    // delegator paths on a1. The decision stays bounded and right: nobody holds more than
    // viewer on a1, everyone keeps control elsewhere.
    let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push("x");
    let mut grants = Vec::new();
    for n in &names {
        grants.push(grant(&format!("g-{n}"), n, Role::Technician, s_site()));
        grants.push(grant(&format!("g-{n}-a1"), n, Role::Viewer, s_unit("a1")));
    }
    let mut locals = Vec::new();
    for by in &names {
        for to in &all {
            if by != to {
                locals.push(local(
                    &format!("l-{by}-{to}"),
                    to,
                    Role::ControlOnly,
                    s_site(),
                    by,
                    &format!("g-{by}"),
                ));
            }
        }
    }
    let ix = Index::build(&inputs(state(&all, grants), locals));
    assert_eq!(ix.dropped(), &[]);
    let a1 = Target::Unit(unit("a1"));
    let b1 = Target::Unit(unit("b1"));
    for who in &all {
        assert_eq!(ix.decide(&uid(who), View, &a1, NOW), Allow, "{who}");
        assert_eq!(
            ix.decide(&uid(who), Control, &a1, NOW),
            Deny(R::RoleLacks),
            "{who}"
        );
        assert_eq!(ix.decide(&uid(who), Control, &b1, NOW), Allow, "{who}");
    }
}

#[test]
fn a_delegation_cycle_does_not_take_away_a_users_own_access() {
    // boss delegates to u on a1; u (admin on the site itself) delegates back to boss on the site.
    let st = state(
        &["u", "boss"],
        vec![
            grant("g1", "boss", Role::Admin, s_site()),
            grant("g2", "u", Role::Admin, s_site()),
        ],
    );
    let local = vec![
        local("l1", "u", Role::Admin, s_unit("a1"), "boss", "g1"),
        local("l2", "boss", Role::Admin, s_unit("a1"), "u", "l1"),
    ];
    let ix = Index::build(&inputs(st, local));
    assert_eq!(
        ix.decide(&uid("boss"), Configure, &Target::Unit(unit("a1")), NOW),
        Allow
    );
    assert_eq!(
        ix.decide(&uid("u"), Configure, &Target::Unit(unit("a1")), NOW),
        Allow
    );
}

#[test]
fn a_cyclic_parent_chain_from_a_corrupt_store_is_dropped() {
    let st = state(&["u", "boss"], vec![]);
    let local = vec![
        local("l1", "u", Role::Admin, s_site(), "boss", "l2"),
        local("l2", "boss", Role::Admin, s_site(), "u", "l1"),
    ];
    let ix = Index::build(&inputs(st, local));
    assert_eq!(
        ix.decide(&uid("u"), View, &Target::Unit(unit("a1")), NOW),
        Deny(R::NoGrant)
    );
    assert_eq!(ix.dropped().len(), 2);
}

#[test]
fn token_grants_join_the_index_and_bundle_deactivation_wins() {
    let mut tok_user = user("inst");
    tok_user.email = "Inst@Example.com".into();
    let mut tok = grant("t1", "inst", Role::Technician, s_site());
    tok.origin = Origin::Token;
    tok.expires_at = Some(NOW + Duration::hours(8));
    // Admitted tokens reach the index as part of the access state (see `grants::engine`).
    let mut st = state(&[], vec![tok.clone()]);
    st.users.push(tok_user.clone());
    let ix = Index::build(&inputs(st, vec![]));
    assert_eq!(
        ix.decide(&uid("inst"), Configure, &Target::Unit(unit("b1")), NOW),
        Allow
    );
    assert_eq!(
        ix.decide(
            &uid("inst"),
            View,
            &Target::Unit(unit("b1")),
            NOW + Duration::hours(9)
        ),
        Deny(R::Expired)
    );
    assert!(ix.user_by_email("inst@EXAMPLE.com ").is_some());
    // The bundle knows the installer and has deactivated them.
    let mut st = state(&["inst"], vec![tok]);
    st.users[0].active = false;
    let ix = Index::build(&inputs(st, vec![]));
    assert_eq!(
        ix.decide(&uid("inst"), View, &Target::Unit(unit("b1")), NOW),
        Deny(R::UserInactive)
    );
}

#[test]
fn listing_shows_only_usable_units_and_points() {
    let st = state(
        &["u"],
        vec![
            grant("g1", "u", Role::ControlOnly, s_group("g-a")),
            grant("g2", "u", Role::None, s_unit("a2")),
            grant("g3", "u", Role::Technician, s_unit("c1")),
        ],
    );
    let ix = build(st);
    let units: Vec<_> = ix
        .visible_units(&uid("u"), NOW)
        .into_iter()
        .map(|v| (v.unit.to_string(), v.role))
        .collect();
    assert_eq!(
        units,
        vec![
            ("a1".to_string(), Role::ControlOnly),
            ("c1".to_string(), Role::Technician)
        ]
    );
    let pa = ix.point_access(&uid("u"), &unit("a1"), View, Some(Control), NOW);
    assert_eq!(
        pa,
        PointAccess {
            viewable: true,
            writable: true
        }
    );
    let pa = ix.point_access(&uid("u"), &unit("a1"), View, Some(Configure), NOW);
    assert_eq!(
        pa,
        PointAccess {
            viewable: true,
            writable: false
        }
    );
    let pa = ix.point_access(&uid("u"), &unit("a1"), Diagnose, None, NOW);
    assert_eq!(
        pa,
        PointAccess {
            viewable: false,
            writable: false
        }
    );
    let pa = ix.point_access(&uid("u"), &unit("c1"), Diagnose, Some(Configure), NOW);
    assert_eq!(
        pa,
        PointAccess {
            viewable: true,
            writable: true
        }
    );
    let pa = ix.point_access(&uid("u"), &unit("a2"), View, Some(Control), NOW);
    assert_eq!(
        pa,
        PointAccess {
            viewable: false,
            writable: false
        }
    );
    // A point that cannot be viewed is never writable.
    assert!(!PointAccess::from_caps(CapSet::of(&[Control]), View, Some(Control)).writable);
}

#[test]
fn authz_swaps_a_rebuilt_index_and_old_readers_keep_theirs() {
    let authz = crate::authz::owner::Access::new(inputs(
        state(&["u"], vec![grant("g1", "u", Role::Admin, s_site())]),
        vec![],
    ));
    let before = authz.index();
    assert!(
        authz
            .decide(&uid("u"), ManageUsers, &Target::Site, NOW)
            .is_allow()
    );
    let mut st = state(&["u"], vec![grant("g1", "u", Role::Admin, s_site())]);
    st.revoked.insert(GrantId::new("g1").unwrap());
    st.seq = 2;
    authz.set_state(Arc::new(st));
    assert_eq!(
        authz.decide(&uid("u"), View, &Target::Site, NOW),
        Deny(R::Revoked)
    );
    assert_eq!(authz.index().seq(), 2);
    // A request that loaded the old index finishes against it.
    assert!(
        before
            .decide(&uid("u"), View, &Target::Site, NOW)
            .is_allow()
    );
}

#[test]
fn readers_never_see_a_half_built_index_while_writers_swap() {
    let mut first = state(&["u"], vec![]);
    first.seq = 0;
    let owner = crate::authz::owner::Access::new(inputs(first, vec![]));
    let authz = owner.authz();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Arc::new(std::sync::Barrier::new(2));
    let reader = {
        let (authz, stop, start) = (authz.clone(), stop.clone(), start.clone());
        std::thread::spawn(move || {
            let mut seen = 0u64;
            start.wait();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || seen < 1000 {
                let ix = authz.index();
                // Every index is whole: seq odd ⇔ the grant is present.
                let allowed = ix.decide(&uid("u"), View, &Target::Site, NOW).is_allow();
                assert_eq!(allowed, ix.seq() % 2 == 1, "seq {}", ix.seq());
                seen += 1;
            }
            seen
        })
    };
    start.wait();
    for seq in 0..200u64 {
        let grants = if seq % 2 == 1 {
            vec![grant("g1", "u", Role::Viewer, s_site())]
        } else {
            vec![]
        };
        let mut st = state(&["u"], grants);
        st.seq = seq;
        owner.set_state(Arc::new(st));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() >= 1000);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// No grant at all means deny, for every capability and target.
        #[test]
        fn no_grant_means_deny(cap in prop::sample::select(Capability::ALL.to_vec()), u in prop::sample::select(vec!["a1","a2","b1","c1"])) {
            let ix = build(state(&["u"], vec![]));
            prop_assert_eq!(ix.decide(&uid("u"), cap, &Target::Unit(unit(u)), NOW), Deny(R::NoGrant));
        }

        /// Adding a grant at a strictly more specific level than every other grant decides the
        /// unit by that grant's role alone (precedence).
        #[test]
        fn the_most_specific_grant_decides(
            base in prop::collection::vec((arb_role(), arb_scope()), 0..6),
            top in arb_role(),
        ) {
            let mut grants: Vec<Grant> = base.iter().enumerate()
                .filter(|(_, (_, s))| !matches!(s, Scope::Unit(_)))
                .map(|(i, (r, s))| grant(&format!("g{i}"), "u", *r, s.clone())).collect();
            grants.push(grant("top", "u", top, s_unit("a1")));
            let ix = build(state(&["u"], grants));
            for cap in Capability::ALL {
                let allowed = ix.decide(&uid("u"), cap, &Target::Unit(unit("a1")), NOW).is_allow();
                prop_assert_eq!(allowed, top.capabilities().contains(cap));
            }
        }
    }
}

#[test]
fn a_role_held_by_credential_is_judged_by_the_same_rule_with_the_package_and_inventory() {
    let point = |u: &str, required| Target::Point {
        unit: unit(u),
        required,
    };
    let mut st = state(
        &["bms-1"],
        vec![grant("g1", "bms-1", Role::Viewer, s_unit("a1"))],
    );
    st.policy.features = CapSet::of(&[View, Control]);
    let ix = build(st);
    // An unbound principal: its role ∩ the package.
    let d = |role, cap, target: &Target| ix.decide_with_role(role, None, cap, target, NOW);
    assert_eq!(d(Role::ControlOnly, Control, &point("b1", View)), Allow);
    assert_eq!(
        d(Role::Viewer, Control, &point("b1", View)),
        Deny(R::RoleLacks)
    );
    assert_eq!(
        d(Role::Technician, View, &point("b1", Diagnose)),
        Deny(R::PackageExcludes)
    );
    assert_eq!(
        d(Role::Technician, View, &point("zz", View)),
        Deny(R::UnknownUnit)
    );
    assert_eq!(d(Role::None, View, &point("a1", View)), Deny(R::RoleLacks));
    // A principal bound to a bundle user: capped at that user's role, and nothing where the
    // user holds nothing.
    let b = |cap, target: &Target| {
        ix.decide_with_role(Role::Technician, Some(&uid("bms-1")), cap, target, NOW)
    };
    assert_eq!(b(View, &point("a1", View)), Allow);
    assert_eq!(b(Control, &point("a1", View)), Deny(R::RoleLacks));
    assert_eq!(b(View, &point("a2", View)), Deny(R::NoGrant));
    // A name the bundle does not know is not bound: the credential's role alone applies.
    assert_eq!(
        ix.decide_with_role(
            Role::ControlOnly,
            Some(&uid("someone-else")),
            Control,
            &point("a2", View),
            NOW
        ),
        Allow
    );
}

#[test]
fn a_bound_principal_loses_access_at_once_when_its_grant_is_revoked_or_its_user_deactivated() {
    let target = Target::Point {
        unit: unit("a1"),
        required: View,
    };
    let base = state(
        &["bms-1"],
        vec![grant("g1", "bms-1", Role::ControlOnly, s_site())],
    );
    let authz = crate::authz::owner::Access::new(inputs(base.clone(), Vec::new()));
    let decide = |a: &crate::authz::owner::Access| {
        a.index().decide_with_role(
            Role::ControlOnly,
            Some(&uid("bms-1")),
            Control,
            &target,
            NOW,
        )
    };
    assert_eq!(decide(&authz), Allow);
    let mut revoked = base.clone();
    revoked.revoked.insert(GrantId::new("g1").unwrap());
    authz.set_state(Arc::new(revoked));
    assert_eq!(decide(&authz), Deny(R::Revoked));
    let mut inactive = base;
    inactive.users[0].active = false;
    authz.set_state(Arc::new(inactive));
    assert_eq!(decide(&authz), Deny(R::UserInactive));
}
