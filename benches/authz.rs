#![expect(
    clippy::unwrap_used,
    reason = "benchmark fixtures are built from constants"
)]
//! Authorization decision latency (10,000 grants over 1,000 units) and login cost (PBKDF2 at
//! 600,000 iterations).
//!
//! Criterion reports the mean; the `percentiles` pass below also prints p50/p99/max per
//! decision, measured by timing batches of 32 decisions (a single decision is too short for the
//! clock to time alone) over a shuffled mix of users, units, capabilities and targets.

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use sitegate::access::{AccessState, Grant, Origin, Policy, User};
use sitegate::authz::{Index, Inputs, Target};
use sitegate::model::{
    CapSet, Capability, GrantId, GroupId, Management, Role, Scope, SiteId, UnitId, UserId,
};

const NOW: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);
const UNITS: usize = 1_000;
const GROUPS: usize = 50;
const USERS: usize = 500;
const GRANTS: usize = 10_000;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn id<T: std::str::FromStr>(s: String) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn fixture() -> (Inputs, Vec<(UserId, UnitId)>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let site: SiteId = id("s-1".into());
    let inventory: Vec<(UnitId, Option<GroupId>)> = (0..UNITS)
        .map(|u| (id(format!("u{u}")), Some(id(format!("grp{}", u % GROUPS)))))
        .collect();
    let users: Vec<User> = (0..USERS)
        .map(|i| User {
            id: id(format!("user{i}")),
            email: format!("user{i}@example.com"),
            name: format!("User {i}"),
            active: i % 97 != 0,
            password: None,
            business: None,
            owner: false,
        })
        .collect();
    let mut grants = Vec::with_capacity(GRANTS);
    let mut revoked = HashSet::new();
    for n in 0..GRANTS {
        let user = users[rng.below(USERS)].id.clone();
        let scope = match rng.below(20) {
            0 => Scope::Site(site.clone()),
            1..=5 => Scope::Group(id(format!("grp{}", rng.below(GROUPS)))),
            _ => Scope::Unit(id(format!("u{}", rng.below(UNITS)))),
        };
        let role = Role::ALL[rng.below(5)];
        let gid: GrantId = id(format!("g{n}"));
        if n % 50 == 0 {
            revoked.insert(gid.clone());
        }
        grants.push(Grant {
            id: gid,
            user,
            role,
            scope,
            not_before: (n % 31 == 0).then(|| NOW + Duration::hours(1)),
            expires_at: match n % 7 {
                0 => Some(NOW - Duration::hours(1)),
                1 | 2 => Some(NOW + Duration::days(30)),
                _ => None,
            },
            origin: Origin::Cloud,
        });
    }
    let state = AccessState {
        site: Some(site.clone()),
        seq: 1,
        issued_at: Some(NOW - Duration::hours(2)),
        last_trusted_time: Some(NOW - Duration::hours(2)),
        policy: Policy {
            management: Management::Independent,
            features: CapSet::of(&[
                Capability::View,
                Capability::Control,
                Capability::Diagnose,
                Capability::Configure,
            ]),
            max_offline: BTreeMap::from([(Role::Technician, Duration::days(30))]),
        },
        users,
        grants,
        revoked,
        requests_denied: HashSet::new(),
    };
    let inputs = Inputs {
        site: Some(site),
        state: Arc::new(state),
        local: Vec::new(),
        local_revoked: HashSet::new(),
        inventory,
        suspended: Vec::new(),
    };
    let queries = (0..4096)
        .map(|_| {
            (
                id(format!("user{}", rng.below(USERS))),
                id(format!("u{}", rng.below(UNITS))),
            )
        })
        .collect();
    (inputs, queries)
}

fn percentiles(ix: &Index, queries: &[(UserId, UnitId)]) {
    const BATCH: usize = 32;
    let targets: Vec<(UserId, Capability, Target)> = queries
        .iter()
        .enumerate()
        .map(|(i, (u, unit))| {
            let cap = Capability::ALL[i % 5];
            let t = if i % 4 == 0 {
                Target::Point {
                    unit: unit.clone(),
                    required: Capability::Diagnose,
                }
            } else {
                Target::Unit(unit.clone())
            };
            (u.clone(), cap, t)
        })
        .collect();
    let mut per_decision_ns = Vec::new();
    let mut allowed = 0usize;
    for round in 0..40 {
        for chunk in targets.chunks(BATCH) {
            let start = Instant::now();
            for (u, cap, t) in chunk {
                if black_box(ix.decide(u, *cap, t, NOW)).is_allow() {
                    allowed += 1;
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / chunk.len() as f64;
            if round > 0 {
                per_decision_ns.push(ns);
            }
        }
    }
    per_decision_ns.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| per_decision_ns[((per_decision_ns.len() - 1) as f64 * p) as usize];
    eprintln!(
        "authz decide ({} grants placed, {UNITS} units, {USERS} users): p50 {:.0} ns, p99 {:.0} ns, max {:.0} ns per decision over {} batches of {BATCH}; {:.1}% allowed",
        ix.grant_count(),
        at(0.50),
        at(0.99),
        at(1.0),
        per_decision_ns.len(),
        100.0 * allowed as f64 / (40.0 * targets.len() as f64),
    );
}

fn bench(c: &mut Criterion) {
    let (inputs, queries) = fixture();
    let ix = Index::build(&inputs);
    percentiles(&ix, &queries);
    let mut i = 0usize;
    c.bench_function("authz_decide_10k_grants_1k_units", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            let (u, unit) = &queries[i];
            black_box(ix.decide(u, Capability::Control, &Target::Unit(unit.clone()), NOW))
        })
    });
    c.bench_function("authz_visible_units_1k_units", |b| {
        let user: UserId = id("user7".into());
        b.iter(|| black_box(ix.visible_units(&user, NOW).len()))
    });
    let mut g = c.benchmark_group("login");
    g.sample_size(10);
    let verifier = sitegate::auth::Verifier::parse(&sitegate::auth::hash_password(
        "correct horse battery staple",
        600_000,
    ))
    .unwrap();
    g.bench_function("pbkdf2_sha256_600k_verify", |b| {
        b.iter(|| black_box(verifier.verify(b"correct horse battery staple")))
    });
    g.finish();
    let mut g = c.benchmark_group("rebuild");
    g.sample_size(20);
    g.bench_function("authz_index_build_10k_grants", |b| {
        b.iter(|| black_box(Index::build(&inputs).grant_count()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
