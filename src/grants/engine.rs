//! The grant engine: applies verified bundles, key sets and installer tokens to the box's state.
//!
//! It owns the checks that need the box's state (site, seq, equivocation, replay, clock policy),
//! the one SQLite transaction per apply, the one `ArcSwap` of the [`AccessState`] after it, and
//! the `watch` channel that tells authz to rebuild. It never changes state on a rejection: every
//! check runs before the transaction, and the swap happens only after `COMMIT` returned.
//!
//! Calls are blocking (SQLite, PBKDF2-free but CPU-bound verification of up to 4 MiB): async
//! callers use `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::bundle::{Bundle, VerifiedBundle, VerifiedToken, policy_to_json};
use super::envelope::{Kind, payload_sha256, peek_kind};
use super::parts::{Assembler, Manifest, Step, VerifiedManifest};
use super::trust::{self, TrustSet, VerifiedKeys};
use super::{CLOCK_TOLERANCE, GrantError, Reason, Rejection, reject};
use crate::access::{AccessState, Policy};
use crate::audit::{Audit, Event};
use crate::clock::{Clock, SharedClock, TrustedClock, from_unix_ms, rfc3339, unix_ms};
use crate::model::{GrantId, SiteId};
use crate::store::{Store, StoreError};

const META_SEQ: &str = "grants.seq";
const META_FLOOR: &str = "grants.last_trusted_ms";
const META_POLICY: &str = "grants.policy";
/// The newest system-clock time seen (the clock's high-water mark), ms since the epoch.
const META_HIGH_WATER: &str = "clock.high_water_ms";
/// A revocation is pruned only this long after its grant's own expiry passed.
const REVOCATION_PRUNE_MARGIN_MS: i64 = 7 * 86_400 * 1000;

/// What a successful [`GrantEngine::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new bundle is in force.
    Applied { seq: u64 },
    /// The bundle in force was received again (MQTT redelivery): nothing changed.
    Duplicate { seq: u64 },
    /// A new trusted key set is in force.
    KeysApplied { seq: u64 },
    /// The key set in force was received again: nothing changed.
    KeysDuplicate { seq: u64 },
    /// An installer token's user and grant were added.
    TokenAdmitted { grant: GrantId },
    /// A manifest or a part of a bundle sent in parts was kept; the set is not complete yet
    /// (`count` is `None` while its manifest has not arrived). Nothing changed.
    PartPending {
        seq: u64,
        received: usize,
        count: Option<usize>,
    },
}

/// The last rejection, for `…/grants/state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionRecord {
    pub kind: &'static str,
    pub reason: Reason,
    pub message: String,
    pub at: OffsetDateTime,
    pub source: String,
    pub seq: Option<u64>,
}

/// Mutable bookkeeping beside the published state (guarded by a mutex, never held during I/O
/// except under the apply lock).
#[derive(Default)]
struct Book {
    bundle: Option<Arc<Bundle>>,
    bundle_sha256: Option<String>,
    /// False when the stored bundle failed re-verification on start-up: then its seq still
    /// guards against rollback, but a redelivery of the same bytes re-applies it.
    stored_bundle_valid: bool,
    tokens: Vec<VerifiedToken>,
    last_rejection: Option<RejectionRecord>,
    last_applied: Option<OffsetDateTime>,
    /// True when a rejection came after the last successful apply.
    rejected_since_apply: bool,
    rollback_raised: bool,
    /// The high-water mark last written to SQLite.
    persisted_high_water: Option<OffsetDateTime>,
}

struct Inner {
    store: Store,
    audit: Audit,
    /// The box's one effective clock (owned here: this engine moves its floor and persists its
    /// high-water mark).
    clock: Arc<TrustedClock>,
    site: SiteId,
    future_skew: time::Duration,
    rollback_alarm: time::Duration,
    state: ArcSwap<AccessState>,
    tx: watch::Sender<Arc<AccessState>>,
    trust: ArcSwap<TrustSet>,
    book: Mutex<Book>,
    /// Bundles being received in parts (only touched under `apply_lock`).
    parts: Mutex<Assembler>,
    apply_lock: Mutex<()>,
}

/// Applies signed envelopes and publishes the access state. Cheap to clone.
#[derive(Clone)]
pub struct GrantEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GrantEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantEngine")
            .field("site", &self.inner.site)
            .field("seq", &self.inner.state.load().seq)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn std_to_time(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Builds the published state from its parts. Revoked grants are left out of `grants` (and also
/// listed in `revoked`, so authz can deny them twice over).
fn build_state(
    site: &SiteId,
    bundle: Option<&Bundle>,
    seq_floor: u64,
    revoked: HashSet<GrantId>,
    tokens: &[VerifiedToken],
    floor: Option<OffsetDateTime>,
) -> AccessState {
    let mut users = Vec::new();
    let mut grants = Vec::new();
    let mut policy = Policy::default();
    let mut issued_at = None;
    let mut seq = seq_floor;
    if let Some(b) = bundle {
        users.extend(b.users.iter().cloned());
        grants.extend(
            b.grants
                .iter()
                .filter(|g| !revoked.contains(&g.id))
                .cloned(),
        );
        policy = b.policy.clone();
        issued_at = Some(b.issued_at);
        seq = b.seq;
    }
    for t in tokens {
        if revoked.contains(&t.grant.id) || grants.iter().any(|g| g.id == t.grant.id) {
            continue;
        }
        match users
            .iter()
            .find(|u| u.id == t.user.id || u.email == t.user.email)
        {
            // The bundle defines this user: the bundle's definition wins.
            Some(u) if u.id == t.user.id => {}
            // Another user already has this e-mail: logins must stay unambiguous.
            Some(_) => continue,
            None => users.push(t.user.clone()),
        }
        grants.push(t.grant.clone());
    }
    AccessState {
        site: Some(site.clone()),
        seq,
        issued_at,
        last_trusted_time: floor,
        policy,
        users,
        grants,
        revoked,
        requests_denied: bundle
            .map(|b| b.requests_denied.iter().cloned().collect())
            .unwrap_or_default(),
    }
}

fn load_revoked(conn: &rusqlite::Connection) -> Result<HashSet<GrantId>, StoreError> {
    let mut stmt = conn.prepare("SELECT grant_id FROM grant_revocations")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = HashSet::new();
    for r in rows {
        let id = r?;
        let g = GrantId::new(id.clone())
            .map_err(|_| StoreError::Corrupt(format!("revoked grant id `{id}` is invalid")))?;
        out.insert(g);
    }
    Ok(out)
}

fn meta_u64(conn: &rusqlite::Connection, key: &str) -> Result<Option<u64>, StoreError> {
    Store::meta_get(conn, key)?
        .map(|s| s.parse::<u64>())
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("`{key}` is not a number")))
}

fn meta_i64(conn: &rusqlite::Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Store::meta_get(conn, key)?
        .map(|s| s.parse::<i64>())
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("`{key}` is not a number")))
}

/// What start-up read from SQLite.
struct Loaded {
    trust: TrustSet,
    seq: u64,
    floor: Option<OffsetDateTime>,
    high_water: Option<OffsetDateTime>,
    revoked: HashSet<GrantId>,
    bundle_row: Option<(u64, String, Vec<u8>)>,
    tokens: Vec<StoredToken>,
    warnings: Vec<String>,
}

/// A row of `grant_tokens` as start-up reads it.
struct StoredToken {
    grant_id: String,
    user_id: String,
    envelope: Vec<u8>,
    /// SHA-256 of the stored bytes (audited when the row is dropped).
    sha256: String,
}

/// Re-verifies a stored installer token the way it was admitted: its envelope through
/// [`VerifiedToken::verify`] with the keys usable now (a key retired or expired since drops it),
/// for this site, and for the grant and user its row names (a row whose envelope was swapped for
/// another token's is dropped). `Ok(None)`: valid but expired.
fn verify_stored_token(
    row: &StoredToken,
    trust: &TrustSet,
    site: &SiteId,
    now: OffsetDateTime,
) -> Result<Option<VerifiedToken>, Rejection> {
    let t = VerifiedToken::verify(&row.envelope, &trust.active_at(now))?;
    if &t.site != site {
        return reject(
            Reason::WrongSite,
            format!("stored token is for site `{}`", t.site),
        );
    }
    if t.grant.id.as_str() != row.grant_id || t.user.id.as_str() != row.user_id {
        return reject(
            Reason::Malformed,
            "stored token's envelope names another grant or user than its row",
        );
    }
    Ok(t.grant.expires_at.is_some_and(|e| e > now).then_some(t))
}

/// Deletes the `grant_tokens` rows that failed re-verification, each with a `token_dropped`
/// audit record (`reason` is the stable rejection code), in one transaction.
fn drop_token_rows(
    store: &Store,
    audit: &Audit,
    dropped: &[(String, String, Rejection)],
) -> Result<(), StoreError> {
    store.with_conn(|conn| {
        let tx = conn.transaction()?;
        for (grant, sha256, r) in dropped {
            tracing::error!(grant = %super::short(grant), reason = %r.reason, "stored installer token no longer verifies; dropped");
            tx.execute("DELETE FROM grant_tokens WHERE grant_id = ?1", [grant])?;
            audit.record_in(
                &tx,
                &Event::new("token_dropped", "rejected")
                    .actor("system")
                    .detail(json!({
                        "grant": grant,
                        "reason": r.reason.as_str(),
                        "message": r.message,
                        "envelope_sha256": sha256,
                    })),
            )?;
        }
        tx.commit()?;
        Ok(())
    })
}

impl GrantEngine {
    /// Opens the engine: seeds the config's trust anchors (while no rotation happened), loads the
    /// key set, re-verifies the stored bundle and tokens, and publishes the resulting state.
    pub fn open(
        store: Store,
        audit: Audit,
        clock: SharedClock,
        site: SiteId,
        cfg: &crate::config::Grants,
    ) -> Result<GrantEngine, GrantError> {
        let now = clock.now();
        let loaded = store.with_conn(|conn| {
            let tx = conn.transaction()?;
            let warnings = trust::seed_from_config(&tx, &cfg.trust, now)?;
            tx.commit()?;
            let trust = TrustSet::load(conn)?;
            let seq = meta_u64(conn, META_SEQ)?.unwrap_or(0);
            let floor = meta_i64(conn, META_FLOOR)?.map(from_unix_ms);
            let high_water = meta_i64(conn, META_HIGH_WATER)?.map(from_unix_ms);
            let revoked = load_revoked(conn)?;
            let bundle_row = conn
                .query_row(
                    "SELECT seq, payload_sha256, envelope FROM grant_bundle WHERE id = 1",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )
                .optional()?
                .map(|(s, h, e)| (u64::try_from(s).unwrap_or(0), h, e));
            let mut stmt = conn.prepare(
                "SELECT grant_id, user_id, envelope FROM grant_tokens ORDER BY admitted_ms",
            )?;
            let tokens = stmt
                .query_map([], |r| {
                    let envelope = r.get::<_, Vec<u8>>(2)?;
                    Ok(StoredToken {
                        grant_id: r.get(0)?,
                        user_id: r.get(1)?,
                        sha256: crate::util::sha256_hex(&envelope),
                        envelope,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Loaded {
                trust,
                seq,
                floor,
                high_water,
                revoked,
                bundle_row,
                tokens,
                warnings,
            })
        })?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let tclock = Arc::new(TrustedClock::new(
            clock,
            loaded.floor,
            loaded.high_water,
            CLOCK_TOLERANCE,
        ));
        let mut book = Book {
            persisted_high_water: loaded.high_water,
            ..Book::default()
        };
        let mut problems = Vec::new();
        if let Some((row_seq, row_sha, envelope)) = &loaded.bundle_row {
            match VerifiedBundle::verify(envelope, &loaded.trust.ever_trusted()) {
                Ok(vb)
                    if vb.bundle().seq == *row_seq
                        && vb.bundle().seq == loaded.seq
                        && vb.payload_sha256() == row_sha
                        && vb.bundle().site == site =>
                {
                    book.bundle_sha256 = Some(row_sha.clone());
                    book.bundle = Some(Arc::new(vb.bundle().clone()));
                    book.stored_bundle_valid = true;
                }
                Ok(_) => problems.push("stored bundle does not match its record".to_string()),
                Err(e) => problems.push(format!("stored bundle no longer verifies: {e}")),
            }
        }
        let eff = tclock.now();
        let mut dropped = Vec::new();
        for row in &loaded.tokens {
            match verify_stored_token(row, &loaded.trust, &site, eff) {
                Ok(Some(t)) => book.tokens.push(t),
                // Expired: it grants nothing; the next applied bundle prunes the row.
                Ok(None) => {}
                Err(r) => dropped.push((row.grant_id.clone(), row.sha256.clone(), r)),
            }
        }
        if !dropped.is_empty() {
            drop_token_rows(&store, &audit, &dropped)?;
        }
        let state = build_state(
            &site,
            book.bundle.as_deref(),
            loaded.seq,
            loaded.revoked,
            &book.tokens,
            loaded.floor,
        );
        let state = Arc::new(state);
        let (tx, _rx) = watch::channel(state.clone());
        let engine = GrantEngine {
            inner: Arc::new(Inner {
                store,
                audit,
                clock: tclock,
                site,
                future_skew: std_to_time(cfg.future_skew),
                rollback_alarm: std_to_time(cfg.clock_rollback_alarm),
                state: ArcSwap::new(state),
                tx,
                trust: ArcSwap::new(Arc::new(loaded.trust)),
                book: Mutex::new(book),
                parts: Mutex::new(Assembler::default()),
                apply_lock: Mutex::new(()),
            }),
        };
        for p in problems {
            tracing::error!("{p}; access from it is withheld until a valid bundle arrives");
            let _ = engine.inner.audit.record_blocking(
                &Event::new("alarm", "raised")
                    .actor("system")
                    .detail(json!({ "alarm": "grant_store_invalid", "message": p })),
            );
        }
        engine.check_clock();
        Ok(engine)
    }

    /// The current access state (lock-free).
    pub fn snapshot(&self) -> Arc<AccessState> {
        self.inner.state.load_full()
    }

    /// A receiver that sees every new access state (bundle, key set or token applied).
    pub fn subscribe(&self) -> watch::Receiver<Arc<AccessState>> {
        self.inner.tx.subscribe()
    }

    /// The trusted key set in force.
    pub fn trust_set(&self) -> Arc<TrustSet> {
        self.inner.trust.load_full()
    }

    pub fn site(&self) -> &SiteId {
        &self.inner.site
    }

    /// The box's effective time: max(system clock, clock floor, high-water mark − tolerance).
    /// Every expiry is judged at it.
    pub fn effective_now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    /// The box's one effective clock, to hand to every component that judges or sets an expiry
    /// (authorization, sessions, lockouts, delegations, the API).
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The same clock with its floor and high-water mark visible.
    pub fn trusted_clock(&self) -> Arc<TrustedClock> {
        self.inner.clock.clone()
    }

    /// Checks the system clock against the clock floor and the high-water mark, raises a
    /// `clock_rollback` audit event (once per episode) when it went back, and persists the
    /// high-water mark when it moved. The clock is rolled back when it is more than
    /// `clock_rollback_alarm` below the floor, or more than [`CLOCK_TOLERANCE`] below the
    /// high-water mark (also if it was so at any reading since the last check). Returns whether
    /// the clock is rolled back now. The daemon calls it every minute; open and every apply call it.
    pub fn check_clock(&self) -> bool {
        let c = &self.inner.clock;
        let effective = c.now();
        let raw = c.raw_now();
        let floor = c.floor();
        let mark = c.high_water();
        let seen = c.take_rollback();
        let below_floor = floor.is_some_and(|f| raw < f - self.inner.rollback_alarm);
        let below_mark = mark.is_some_and(|m| raw < m - c.tolerance());
        let rolled_back = below_floor || below_mark;
        let newly = {
            let mut book = lock(&self.inner.book);
            // A rollback seen at any reading since the last check counts, even if the clock
            // was put forward again before this check.
            let newly = (rolled_back || seen.is_some()) && !book.rollback_raised;
            book.rollback_raised = rolled_back;
            newly
        };
        if newly {
            let newest = match (floor, mark) {
                (Some(f), Some(m)) => f.max(m),
                (f, m) => f.or(m).unwrap_or(raw),
            };
            let behind = (newest - raw).max(seen.unwrap_or(time::Duration::ZERO));
            tracing::warn!(clock = %rfc3339(raw), effective = %rfc3339(effective), "system clock went back; expiry stays judged at the effective time");
            let _ = self.inner.audit.record_blocking(
                &Event::new("clock_rollback", "raised")
                    .actor("system")
                    .detail(json!({
                        "clock": rfc3339(raw),
                        "last_trusted_time": floor.map(rfc3339),
                        "high_water": mark.map(rfc3339),
                        "effective": rfc3339(effective),
                        "behind_secs": behind.whole_seconds(),
                    })),
            );
        }
        self.persist_high_water();
        rolled_back
    }

    /// Writes the high-water mark to SQLite if it moved since the last write.
    fn persist_high_water(&self) {
        let mark = self.inner.clock.high_water();
        {
            let book = lock(&self.inner.book);
            if mark.is_none() || book.persisted_high_water == mark {
                return;
            }
        }
        let Some(m) = mark else { return };
        let written = self
            .inner
            .store
            .with_conn(|conn| Store::meta_set(conn, META_HIGH_WATER, &unix_ms(m).to_string()));
        match written {
            Ok(()) => lock(&self.inner.book).persisted_high_water = Some(m),
            Err(e) => tracing::warn!(error = %e, "cannot persist the clock's high-water mark"),
        }
    }

    /// Applies one envelope. `kind_hint` is the kind the channel carries (the MQTT `…/grants`
    /// topic carries bundles, `…/keys` key sets); `None` accepts any kind. `source` names where
    /// the bytes came from (`mqtt`, `file:…`, `api`) for the audit trail.
    ///
    /// Blocking: call from `spawn_blocking` in async code. Every rejection is audited
    /// (`grant_rejected` / `keys_rejected`) and leaves the state untouched.
    pub fn apply(
        &self,
        kind_hint: Option<Kind>,
        bytes: &[u8],
        source: &str,
    ) -> Result<ApplyOutcome, Rejection> {
        let _guard = lock(&self.inner.apply_lock);
        let kind = match (peek_kind(bytes), kind_hint) {
            // The bundle channel (`…/grants` and `…/grants/parts/+`) also carries bundles in
            // parts: their manifest and their parts.
            (Ok(k @ (Kind::Manifest | Kind::Part)), Some(Kind::Bundle)) => k,
            (Ok(k), hint) => hint.unwrap_or(k),
            (Err(r), hint) => {
                return Err(self.rejected(hint.unwrap_or(Kind::Bundle), source, r, None));
            }
        };
        match kind {
            Kind::Bundle => {
                let outcome = self.apply_bundle(bytes, source, None)?;
                if let ApplyOutcome::Applied { seq } = outcome {
                    lock(&self.inner.parts).bundle_applied(seq);
                }
                Ok(outcome)
            }
            Kind::Keys => self.apply_keys(bytes, source),
            Kind::Token => self.admit_token_locked(bytes, source),
            Kind::Manifest => self.apply_manifest(bytes, source),
            Kind::Part => self.apply_part(bytes, source),
        }
    }

    /// Audits a verified set that was dropped before it completed (`incomplete`).
    fn expire_parts(&self, source: &str) {
        let dropped = lock(&self.inner.parts).expire(std::time::Instant::now());
        if let Some(d) = dropped {
            self.rejected(Kind::Manifest, source, d.rejection(), Some(d.seq));
        }
    }

    /// A manifest of a bundle in parts: verified (signature first), checked against the bundle in
    /// force, then the set waits for its parts (or completes with parts that came first).
    fn apply_manifest(&self, bytes: &[u8], source: &str) -> Result<ApplyOutcome, Rejection> {
        self.expire_parts(source);
        let trust = self.inner.trust.load_full();
        let vm = VerifiedManifest::verify(bytes, &trust.active_at(self.inner.clock.signed_now()))
            .map_err(|r| self.rejected(Kind::Manifest, source, r, None))?;
        let m = &vm.manifest;
        let fail = |r: Rejection| self.rejected(Kind::Manifest, source, r, Some(m.seq));
        if vm.site != self.inner.site {
            return Err(fail(Rejection::new(
                Reason::WrongSite,
                format!(
                    "manifest is for site `{}`, this box serves `{}`",
                    vm.site, self.inner.site
                ),
            )));
        }
        let cur = self.inner.state.load_full();
        if m.seq < cur.seq {
            return Err(fail(Rejection::new(
                Reason::Replay,
                format!(
                    "manifest for seq {} is older than the applied seq {}",
                    m.seq, cur.seq
                ),
            )));
        }
        if m.seq == cur.seq {
            let book = lock(&self.inner.book);
            if book.stored_bundle_valid
                && book.bundle_sha256.as_deref() == Some(m.payload_sha256.as_str())
            {
                drop(book);
                lock(&self.inner.parts).applied(&vm.sha256, m.seq);
                return Ok(ApplyOutcome::Duplicate { seq: m.seq });
            }
            // Same seq, other content: reassembled, the bundle path decides (equivocation).
        }
        // INVARIANT: `parts` is never held while `book` is taken (`rejected` takes `book`;
        // `state_json` takes `book` then `parts`).
        let taken = lock(&self.inner.parts).on_manifest(&vm, std::time::Instant::now());
        let (step, dropped, refused) = taken.map_err(fail)?;
        if let Some(d) = dropped {
            self.rejected(Kind::Manifest, source, d.rejection(), Some(d.seq));
        }
        for r in refused {
            self.rejected(Kind::Part, source, r, Some(m.seq));
        }
        self.finish_step(step, &vm.sha256, source)
    }

    /// A part of a bundle in parts.
    fn apply_part(&self, bytes: &[u8], source: &str) -> Result<ApplyOutcome, Rejection> {
        self.expire_parts(source);
        let p = super::parts::parse_part(bytes)
            .map_err(|r| self.rejected(Kind::Part, source, r, None))?;
        let seq = p.seq;
        let fail = |r: Rejection| self.rejected(Kind::Part, source, r, Some(seq));
        if p.site != self.inner.site {
            return Err(fail(Rejection::new(
                Reason::WrongSite,
                format!(
                    "part is for site `{}`, this box serves `{}`",
                    p.site, self.inner.site
                ),
            )));
        }
        let cur_seq = self.inner.state.load().seq;
        if p.seq < cur_seq {
            return Err(fail(Rejection::new(
                Reason::Replay,
                format!(
                    "part {} of seq {} is older than the applied seq {cur_seq}",
                    p.index, p.seq
                ),
            )));
        }
        let manifest_sha = p.manifest.clone();
        let taken = {
            let mut parts = lock(&self.inner.parts);
            if p.seq == cur_seq && parts.is_applied(&p.manifest) {
                // A redelivery of the set in force (retained parts on every reconnect).
                return Ok(ApplyOutcome::Duplicate { seq: cur_seq });
            }
            parts.on_part(p, std::time::Instant::now())
        };
        let step = taken.map_err(fail)?;
        self.finish_step(step, &manifest_sha, source)
    }

    /// A complete set goes to the bundle path as one envelope; a pending one reports progress.
    fn finish_step(
        &self,
        step: Step,
        manifest_sha: &str,
        source: &str,
    ) -> Result<ApplyOutcome, Rejection> {
        match step {
            Step::Pending {
                seq,
                received,
                count,
            } => Ok(ApplyOutcome::PartPending {
                seq,
                received,
                count,
            }),
            Step::Complete { manifest, bytes } => {
                super::parts::check_whole(&manifest, &bytes)
                    .map_err(|r| self.rejected(Kind::Manifest, source, r, Some(manifest.seq)))?;
                let outcome = self.apply_bundle(&bytes, source, Some(&manifest))?;
                if let ApplyOutcome::Applied { seq } | ApplyOutcome::Duplicate { seq } = outcome {
                    lock(&self.inner.parts).applied(manifest_sha, seq);
                }
                Ok(outcome)
            }
        }
    }

    /// Records a rejection (audit + last rejection) and returns it.
    fn rejected(&self, kind: Kind, source: &str, r: Rejection, seq: Option<u64>) -> Rejection {
        let r = self.audit_rejection(kind, source, r, seq);
        let mut book = lock(&self.inner.book);
        book.rejected_since_apply = true;
        book.last_rejection = Some(RejectionRecord {
            kind: kind.as_str(),
            reason: r.reason,
            message: r.message.clone(),
            at: self.inner.clock.now(),
            source: source.to_string(),
            seq,
        });
        r
    }

    /// Audits a rejection without making it the last one (what `…/grants/state` reports).
    fn audit_rejection(
        &self,
        kind: Kind,
        source: &str,
        r: Rejection,
        seq: Option<u64>,
    ) -> Rejection {
        let event_kind = match kind {
            Kind::Keys => "keys_rejected",
            Kind::Bundle | Kind::Token | Kind::Manifest | Kind::Part => "grant_rejected",
        };
        tracing::warn!(kind = %kind, reason = %r.reason, source, "{}", r.message);
        let mut detail = json!({
            "kind": kind.as_str(),
            "reason": r.reason.as_str(),
            "message": r.message,
            "source": source,
        });
        if let (Some(s), Some(obj)) = (seq, detail.as_object_mut()) {
            obj.insert("seq".into(), json!(s));
        }
        let _ = self.inner.audit.record_blocking(
            &Event::new(event_kind, "rejected")
                .actor("system")
                .detail(detail),
        );
        if r.reason == Reason::Equivocation {
            let _ = self.inner.audit.record_blocking(
                &Event::new("alarm", "raised").actor("system").detail(json!({
                    "alarm": format!("{}_equivocation", kind.as_str()),
                    "seq": seq,
                    "message": r.message,
                    "source": source,
                })),
            );
        }
        r
    }

    /// Applies a bundle envelope; `manifest` when it was reassembled from parts (then the bundle
    /// must be the one the manifest names).
    fn apply_bundle(
        &self,
        bytes: &[u8],
        source: &str,
        manifest: Option<&Manifest>,
    ) -> Result<ApplyOutcome, Rejection> {
        self.check_clock();
        let now = self.inner.clock.now();
        let cur = self.inner.state.load_full();
        let eff = now;
        // INVARIANT: a redelivery of the payload in force changes nothing, so it is answered
        // before verification (its key may have been retired since it was applied).
        {
            let book = lock(&self.inner.book);
            if book.stored_bundle_valid
                && book.bundle_sha256.is_some()
                && payload_sha256(bytes, Kind::Bundle) == book.bundle_sha256
            {
                return Ok(ApplyOutcome::Duplicate { seq: cur.seq });
            }
        }
        let trust = self.inner.trust.load_full();
        // Keys are judged on signed time (not the high-water mark), so that a forward jump of
        // the local clock cannot retire the key of the bundle that corrects it.
        let vb = VerifiedBundle::verify(bytes, &trust.active_at(self.inner.clock.signed_now()))
            .map_err(|r| self.rejected(Kind::Bundle, source, r, None))?;
        let seq = vb.bundle().seq;
        if let Some(m) = manifest
            && (m.seq != seq || m.payload_sha256 != vb.payload_sha256())
        {
            return Err(self.rejected(
                Kind::Manifest,
                source,
                Rejection::new(
                    Reason::PartMismatch,
                    format!(
                        "the reassembled bundle (seq {seq}) is not the one its manifest names (seq {})",
                        m.seq
                    ),
                ),
                Some(m.seq),
            ));
        }
        self.check_bundle(&vb, &cur, eff)
            .map_err(|r| self.rejected(Kind::Bundle, source, r, Some(seq)))
            .and_then(|dup| match dup {
                Some(outcome) => Ok(outcome),
                None => self
                    .commit_bundle(&vb, &cur, now, eff, source)
                    .map_err(|r| self.rejected(Kind::Bundle, source, r, Some(seq))),
            })
    }

    /// The state-dependent checks. `Ok(Some(Duplicate))` for an idempotent redelivery.
    fn check_bundle(
        &self,
        vb: &VerifiedBundle,
        cur: &AccessState,
        eff: OffsetDateTime,
    ) -> Result<Option<ApplyOutcome>, Rejection> {
        let b = vb.bundle();
        if b.site != self.inner.site {
            return reject(
                Reason::WrongSite,
                format!(
                    "bundle is for site `{}`, this box serves `{}`",
                    b.site, self.inner.site
                ),
            );
        }
        let (cur_sha, valid) = {
            let book = lock(&self.inner.book);
            (book.bundle_sha256.clone(), book.stored_bundle_valid)
        };
        if b.seq == cur.seq {
            let same = cur_sha.as_deref() == Some(vb.payload_sha256());
            if same && valid {
                return Ok(Some(ApplyOutcome::Duplicate { seq: b.seq }));
            }
            if !same {
                // A stored bundle that failed re-verification has no trustworthy hash: compare
                // with the history row written when it was applied.
                let hist = self.history_sha(b.seq)?;
                if hist.as_deref() != Some(vb.payload_sha256()) {
                    return reject(
                        Reason::Equivocation,
                        format!(
                            "bundle seq {} was already applied with different content",
                            b.seq
                        ),
                    );
                }
            }
        } else if b.seq < cur.seq {
            return match self.history_sha(b.seq)? {
                Some(h) if h == vb.payload_sha256() => reject(
                    Reason::Replay,
                    format!("bundle seq {} was superseded by seq {}", b.seq, cur.seq),
                ),
                Some(_) => reject(
                    Reason::Equivocation,
                    format!(
                        "bundle seq {} was already applied with different content",
                        b.seq
                    ),
                ),
                None => reject(
                    Reason::Rollback,
                    format!(
                        "bundle seq {} is older than the applied seq {}",
                        b.seq, cur.seq
                    ),
                ),
            };
        }
        if b.issued_at > eff + self.inner.future_skew {
            return reject(
                Reason::FutureDated,
                format!(
                    "bundle issued at {} is more than {} s ahead of this box's time {}",
                    rfc3339(b.issued_at),
                    self.inner.future_skew.whole_seconds(),
                    rfc3339(eff)
                ),
            );
        }
        Ok(None)
    }

    fn history_sha(&self, seq: u64) -> Result<Option<String>, Rejection> {
        self.inner
            .store
            .with_conn(|c| {
                Ok(c.query_row(
                    "SELECT payload_sha256 FROM grant_bundle_history WHERE seq = ?1",
                    [seq_i64(seq)],
                    |r| r.get::<_, String>(0),
                )
                .optional()?)
            })
            .map_err(|e| Rejection::new(Reason::Storage, format!("database: {e}")))
    }

    fn commit_bundle(
        &self,
        vb: &VerifiedBundle,
        cur: &AccessState,
        now: OffsetDateTime,
        eff: OffsetDateTime,
        source: &str,
    ) -> Result<ApplyOutcome, Rejection> {
        let b = vb.bundle();
        let floor = Some(match cur.last_trusted_time {
            Some(f) if f > b.issued_at => f,
            _ => b.issued_at,
        });
        let correction = self.forward_jump_correction(b.issued_at);
        // After a correction, expiry in this apply is judged on the corrected time.
        let eff = match (correction, floor) {
            (Some(c), Some(f)) => c.max(f),
            _ => eff,
        };
        // What we know about each revoked grant's expiry (for later pruning).
        let mut expiry: HashMap<&GrantId, Option<OffsetDateTime>> = HashMap::new();
        for g in cur.grants.iter().chain(b.grants.iter()) {
            expiry.insert(&g.id, g.expires_at);
        }
        let audit = self.inner.audit.clone();
        let prune_before = unix_ms(eff).saturating_sub(REVOCATION_PRUNE_MARGIN_MS);
        let revoked = self
            .inner
            .store
            .with_conn(|conn| {
                let tx = conn.transaction()?;
                // INVARIANT: the database's seq never goes back, even if another process (the
                // `grants apply` tool) moved it since this engine loaded.
                let stored = meta_u64(&tx, META_SEQ)?.unwrap_or(0);
                if stored > b.seq || (stored == b.seq && stored != cur.seq) {
                    return Ok(Err(Rejection::new(
                        Reason::Rollback,
                        format!("the database already holds bundle seq {stored}; restart to load it"),
                    )));
                }
                {
                    let mut ins = tx.prepare(
                        "INSERT OR IGNORE INTO grant_revocations(grant_id, seq, revoked_ms, expires_at_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for r in &b.revoked {
                        let exp = expiry.get(r).copied().flatten().map(unix_ms);
                        ins.execute(params![r.as_str(), seq_i64(b.seq), unix_ms(now), exp])?;
                    }
                }
                tx.execute(
                    "DELETE FROM grant_revocations WHERE expires_at_ms IS NOT NULL AND expires_at_ms < ?1",
                    [prune_before],
                )?;
                tx.execute(
                    "DELETE FROM grant_tokens WHERE expires_at_ms < ?1",
                    [unix_ms(eff)],
                )?;
                let revoked = load_revoked(&tx)?;
                tx.execute("DELETE FROM grant_grants", [])?;
                tx.execute("DELETE FROM grant_users", [])?;
                {
                    let mut ins = tx.prepare(
                        "INSERT INTO grant_users(id, email, name, active, password) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for u in &b.users {
                        ins.execute(params![
                            u.id.as_str(),
                            u.email,
                            u.name,
                            u.active,
                            u.password
                        ])?;
                    }
                    let mut ins = tx.prepare(
                        "INSERT INTO grant_grants(id, user_id, role, scope, not_before_ms, expires_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for g in &b.grants {
                        let scope = serde_json::to_string(&g.scope).unwrap_or_default();
                        ins.execute(params![
                            g.id.as_str(),
                            g.user.as_str(),
                            g.role.as_str(),
                            scope,
                            g.not_before.map(unix_ms),
                            g.expires_at.map(unix_ms)
                        ])?;
                    }
                }
                Store::meta_set(&tx, META_SEQ, &b.seq.to_string())?;
                Store::meta_set(&tx, META_POLICY, &policy_to_json(&b.policy).to_string())?;
                if let Some(f) = floor {
                    Store::meta_set(&tx, META_FLOOR, &unix_ms(f).to_string())?;
                }
                if let Some(c) = correction {
                    Store::meta_set(&tx, META_HIGH_WATER, &unix_ms(c).to_string())?;
                    audit.record_in(
                        &tx,
                        &Event::new("clock_corrected", "ok").actor("system").detail(json!({
                            "high_water": self.inner.clock.high_water().map(rfc3339),
                            "corrected_to": rfc3339(c),
                            "issued_at": rfc3339(b.issued_at),
                            "seq": b.seq,
                        })),
                    )?;
                }
                tx.execute(
                    "INSERT OR REPLACE INTO grant_bundle(id, seq, payload_sha256, issued_at_ms, envelope, applied_ms)
                     VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                    params![
                        seq_i64(b.seq),
                        vb.payload_sha256(),
                        unix_ms(b.issued_at),
                        vb.envelope(),
                        unix_ms(now)
                    ],
                )?;
                tx.execute(
                    "INSERT OR REPLACE INTO grant_bundle_history(seq, payload_sha256, issued_at_ms, applied_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![seq_i64(b.seq), vb.payload_sha256(), unix_ms(b.issued_at), unix_ms(now)],
                )?;
                audit.record_in(
                    &tx,
                    &Event::new("grants_applied", "ok").actor("system").detail(json!({
                        "seq": b.seq,
                        "previous_seq": cur.seq,
                        "issued_at": rfc3339(b.issued_at),
                        "kid": vb.kid(),
                        "payload_sha256": vb.payload_sha256(),
                        "users": b.users.len(),
                        "grants": b.grants.len(),
                        "revoked": b.revoked.len(),
                        "source": source,
                    })),
                )?;
                tx.commit()?;
                Ok(Ok(revoked))
            })
            .map_err(|e| Rejection::new(Reason::Storage, format!("database: {e}")))??;
        // Committed: move the clock, then publish with one swap.
        if let Some(f) = floor {
            self.inner.clock.raise_floor(f);
        }
        if let Some(c) = correction {
            tracing::warn!(corrected_to = %rfc3339(c), "the clock's high-water mark was ahead of signed time; corrected by the bundle");
            self.inner.clock.reset_high_water(c);
            lock(&self.inner.book).persisted_high_water = Some(c);
        }
        let bundle = Arc::new(b.clone());
        let state = {
            let mut book = lock(&self.inner.book);
            book.tokens.retain(|t| {
                !revoked.contains(&t.grant.id) && t.grant.expires_at.is_some_and(|e| e > eff)
            });
            let state = build_state(
                &self.inner.site,
                Some(&bundle),
                b.seq,
                revoked,
                &book.tokens,
                floor,
            );
            book.bundle = Some(bundle);
            book.bundle_sha256 = Some(vb.payload_sha256().to_string());
            book.stored_bundle_valid = true;
            book.last_applied = Some(now);
            book.rejected_since_apply = false;
            Arc::new(state)
        };
        self.publish(state);
        tracing::info!(
            seq = b.seq,
            grants = b.grants.len(),
            source,
            "grant bundle applied"
        );
        Ok(ApplyOutcome::Applied { seq: b.seq })
    }

    /// The corrected high-water mark when a bundle signed at `issued_at` shows that the mark
    /// ran ahead of real time (the system clock was set forward by mistake and then put right):
    /// the mark is more than `future_skew` ahead of the signed time AND the system clock agrees
    /// with the signed time within `future_skew`. The mark is then set to the later of the two;
    /// never below the clock floor (the caller keeps the floor).
    fn forward_jump_correction(&self, issued_at: OffsetDateTime) -> Option<OffsetDateTime> {
        let skew = self.inner.future_skew;
        let mark = self.inner.clock.high_water()?;
        let raw = self.inner.clock.raw_now();
        let ahead = mark > issued_at + skew;
        let agrees = raw <= issued_at + skew && raw >= issued_at - skew;
        (ahead && agrees).then(|| raw.max(issued_at))
    }

    fn publish(&self, state: Arc<AccessState>) {
        self.inner.state.store(state.clone());
        self.inner.tx.send_replace(state);
    }

    fn apply_keys(&self, bytes: &[u8], source: &str) -> Result<ApplyOutcome, Rejection> {
        self.check_clock();
        let now = self.inner.clock.now();
        let cur = self.inner.state.load_full();
        let eff = now;
        let trust = self.inner.trust.load_full();
        // INVARIANT: as for bundles, the key set in force received again changes nothing.
        if trust.seq > 0
            && trust.payload_sha256.is_some()
            && payload_sha256(bytes, Kind::Keys) == trust.payload_sha256
        {
            return Ok(ApplyOutcome::KeysDuplicate { seq: trust.seq });
        }
        let vk = VerifiedKeys::verify(bytes, &trust.active_at(self.inner.clock.signed_now()))
            .map_err(|r| self.rejected(Kind::Keys, source, r, None))?;
        let seq = vk.seq;
        let fail = |r: Rejection| self.rejected(Kind::Keys, source, r, Some(seq));
        if vk.seq <= trust.seq {
            let hist: Option<String> = self
                .inner
                .store
                .with_conn(|c| {
                    Ok(c.query_row(
                        "SELECT payload_sha256 FROM grant_keysets WHERE seq = ?1",
                        [seq_i64(vk.seq)],
                        |r| r.get(0),
                    )
                    .optional()?)
                })
                .map_err(|e| fail(Rejection::new(Reason::Storage, format!("database: {e}"))))?;
            let same = hist.as_deref() == Some(vk.payload_sha256());
            return match (vk.seq == trust.seq, same, hist.is_some()) {
                (true, true, _) => Ok(ApplyOutcome::KeysDuplicate { seq: vk.seq }),
                (_, false, true) | (true, false, false) => Err(fail(Rejection::new(
                    Reason::Equivocation,
                    format!(
                        "key set seq {} was already applied with different content",
                        vk.seq
                    ),
                ))),
                (false, true, _) => Err(fail(Rejection::new(
                    Reason::Replay,
                    format!("key set seq {} was superseded by seq {}", vk.seq, trust.seq),
                ))),
                (false, false, false) => Err(fail(Rejection::new(
                    Reason::Rollback,
                    format!(
                        "key set seq {} is older than the applied seq {}",
                        vk.seq, trust.seq
                    ),
                ))),
            };
        }
        if vk.issued_at > eff + self.inner.future_skew {
            return Err(fail(Rejection::new(
                Reason::FutureDated,
                format!(
                    "key set issued at {} is more than {} s ahead of this box's time {}",
                    rfc3339(vk.issued_at),
                    self.inner.future_skew.whole_seconds(),
                    rfc3339(eff)
                ),
            )));
        }
        let floor = match cur.last_trusted_time {
            Some(f) if f > vk.issued_at => f,
            _ => vk.issued_at,
        };
        let audit = self.inner.audit.clone();
        let retired: Vec<String> = trust
            .keys
            .values()
            .filter(|k| k.retired_at.is_none() && !vk.keys.iter().any(|n| n.kid == k.kid))
            .map(|k| k.kid.clone())
            .collect();
        let new_trust = self
            .inner
            .store
            .with_conn(|conn| {
                let tx = conn.transaction()?;
                let stored = TrustSet::load(&tx)?.seq;
                if stored >= vk.seq {
                    return Ok(Err(Rejection::new(
                        Reason::Rollback,
                        format!(
                            "the database already holds key set seq {stored}; restart to load it"
                        ),
                    )));
                }
                trust::store_keys(&tx, &vk, now)?;
                Store::meta_set(&tx, META_FLOOR, &unix_ms(floor).to_string())?;
                audit.record_in(
                    &tx,
                    &Event::new("keys_applied", "ok")
                        .actor("system")
                        .detail(json!({
                            "seq": vk.seq,
                            "previous_seq": trust.seq,
                            "issued_at": rfc3339(vk.issued_at),
                            "keys": vk.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
                            "retired": retired,
                            "signed_by": vk.signed_by,
                            "source": source,
                        })),
                )?;
                tx.commit()?;
                TrustSet::load(conn).map(Ok)
            })
            .map_err(|e| fail(Rejection::new(Reason::Storage, format!("database: {e}"))))?
            .map_err(fail)?;
        let new_trust = Arc::new(new_trust);
        self.inner.trust.store(new_trust.clone());
        self.inner.clock.raise_floor(floor);
        // Installer tokens signed by a key this set retired no longer vouch for anyone: they are
        // dropped now, as the next start would drop them.
        let withdrawn = {
            let mut book = lock(&self.inner.book);
            book.rejected_since_apply = false;
            let keys = new_trust.active_at(now);
            let mut withdrawn = Vec::new();
            book.tokens
                .retain(|t| match VerifiedToken::verify(t.envelope(), &keys) {
                    Ok(_) => true,
                    Err(r) => {
                        let sha = crate::util::sha256_hex(t.envelope());
                        withdrawn.push((t.grant.id.as_str().to_string(), sha, r));
                        false
                    }
                });
            withdrawn
        };
        if !withdrawn.is_empty()
            && let Err(e) = drop_token_rows(&self.inner.store, &self.inner.audit, &withdrawn)
        {
            // The rows stay; the next start re-verifies and drops them.
            tracing::error!(error = %e, "cannot delete the installer tokens the key set withdrew");
        }
        if cur.last_trusted_time != Some(floor) || !withdrawn.is_empty() {
            let next = {
                let book = lock(&self.inner.book);
                Arc::new(build_state(
                    &self.inner.site,
                    book.bundle.as_deref(),
                    cur.seq,
                    cur.revoked.clone(),
                    &book.tokens,
                    Some(floor),
                ))
            };
            self.publish(next);
        }
        tracing::info!(seq = vk.seq, source, "trusted key set applied");
        Ok(ApplyOutcome::KeysApplied { seq: vk.seq })
    }

    /// Verifies an installer token for this box: signature by a trusted key, this site, not
    /// future-dated, grant not revoked, not expired and already valid (judged at the clock floor).
    /// Works with no bundle on the box. Rejections are audited but are not the "last rejection"
    /// of `…/grants/state`: that document reports what the cloud sent, and anyone on the LAN can
    /// send a token to the login. Does not change state: see [`GrantEngine::admit_token`].
    pub fn verify_token(&self, bytes: &[u8]) -> Result<VerifiedToken, Rejection> {
        self.verify_token_inner(bytes)
            .map_err(|r| self.audit_rejection(Kind::Token, "token", r, None))
    }

    fn verify_token_inner(&self, bytes: &[u8]) -> Result<VerifiedToken, Rejection> {
        let eff = self.inner.clock.now();
        let cur = self.inner.state.load_full();
        let trust = self.inner.trust.load_full();
        let t = VerifiedToken::verify(bytes, &trust.active_at(eff))?;
        if t.site != self.inner.site {
            return reject(
                Reason::WrongSite,
                format!(
                    "token is for site `{}`, this box serves `{}`",
                    t.site, self.inner.site
                ),
            );
        }
        if t.issued_at > eff + self.inner.future_skew {
            return reject(Reason::FutureDated, "token is issued in the future");
        }
        if cur.revoked.contains(&t.grant.id) {
            return reject(
                Reason::Revoked,
                format!("grant `{}` is revoked", t.grant.id),
            );
        }
        if t.grant.expires_at.is_none_or(|e| e <= eff) {
            return reject(
                Reason::Expired,
                format!("grant `{}` has expired", t.grant.id),
            );
        }
        if t.grant.not_before.is_some_and(|nb| nb > eff) {
            return reject(
                Reason::Expired,
                format!("grant `{}` is not valid yet", t.grant.id),
            );
        }
        Ok(t)
    }

    /// Verifies an installer token and adds its user and grant to the access state (persisted,
    /// kept until the grant expires or is revoked; a bundle's own user or grant with the same id
    /// takes precedence). Moves the clock floor to the token's signed `issued_at`.
    pub fn admit_token(&self, bytes: &[u8], source: &str) -> Result<ApplyOutcome, Rejection> {
        let _guard = lock(&self.inner.apply_lock);
        self.admit_token_locked(bytes, source)
    }

    /// [`GrantEngine::admit_token`] for a token presented at the LAN login: the same
    /// verification, persistence (the envelope as received, in `grant_tokens`) and publication,
    /// but a rejection is only audited, not made the last rejection of `…/grants/state` (anyone
    /// on the LAN can send a token to the login). Returns the admitted token.
    pub fn admit_login_token(&self, bytes: &[u8]) -> Result<VerifiedToken, Rejection> {
        let _guard = lock(&self.inner.apply_lock);
        let t = self
            .verify_token_inner(bytes)
            .map_err(|r| self.audit_rejection(Kind::Token, "login", r, None))?;
        self.store_token(t.clone(), "login")?;
        Ok(t)
    }

    fn admit_token_locked(&self, bytes: &[u8], source: &str) -> Result<ApplyOutcome, Rejection> {
        let t = self
            .verify_token_inner(bytes)
            .map_err(|r| self.rejected(Kind::Token, source, r, None))?;
        self.store_token(t, source)
    }

    /// Persists a verified token's envelope, moves the clock floor and publishes the new state.
    fn store_token(&self, t: VerifiedToken, source: &str) -> Result<ApplyOutcome, Rejection> {
        let now = self.inner.clock.now();
        let cur = self.inner.state.load_full();
        let floor = match cur.last_trusted_time {
            Some(f) if f > t.issued_at => f,
            _ => t.issued_at,
        };
        let audit = self.inner.audit.clone();
        let expires = t.grant.expires_at.map(unix_ms).unwrap_or(0);
        self.inner
            .store
            .with_conn(|conn| {
                let tx = conn.transaction()?;
                tx.execute(
                    "INSERT OR REPLACE INTO grant_tokens(grant_id, user_id, envelope, expires_at_ms, admitted_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.grant.id.as_str(), t.user.id.as_str(), t.envelope(), expires, unix_ms(now)],
                )?;
                Store::meta_set(&tx, META_FLOOR, &unix_ms(floor).to_string())?;
                audit.record_in(
                    &tx,
                    &Event::new("token_admitted", "ok").actor(t.user.id.as_str()).detail(json!({
                        "grant": t.grant.id.as_str(),
                        "role": t.grant.role.as_str(),
                        "scope": t.grant.scope.to_string(),
                        "expires_at": t.grant.expires_at.map(rfc3339),
                        "kid": t.kid(),
                        "source": source,
                    })),
                )?;
                tx.commit()?;
                Ok(())
            })
            .map_err(|e| {
                self.rejected(
                    Kind::Token,
                    source,
                    Rejection::new(Reason::Storage, format!("database: {e}")),
                    None,
                )
            })?;
        self.inner.clock.raise_floor(floor);
        let grant = t.grant.id.clone();
        let state = {
            let mut book = lock(&self.inner.book);
            book.tokens.retain(|x| x.grant.id != t.grant.id);
            book.tokens.push(t);
            book.rejected_since_apply = false;
            Arc::new(build_state(
                &self.inner.site,
                book.bundle.as_deref(),
                cur.seq,
                cur.revoked.clone(),
                &book.tokens,
                Some(floor),
            ))
        };
        self.publish(state);
        Ok(ApplyOutcome::TokenAdmitted { grant })
    }

    /// The retained `…/grants/state` message: the applied bundle (seq, hash, issue time), the key
    /// set seq, the clock floor, and the last rejection with its reason.
    pub fn state_json(&self) -> Value {
        let s = self.inner.state.load_full();
        let trust = self.inner.trust.load_full();
        let book = lock(&self.inner.book);
        let status = if book.rejected_since_apply {
            "rejected"
        } else if book.bundle.is_some() {
            "applied"
        } else {
            "none"
        };
        json!({
            "site": self.inner.site.as_str(),
            "status": status,
            "seq": s.seq,
            "issued_at": s.issued_at.map(rfc3339),
            "payload_sha256": book.bundle_sha256,
            "applied_at": book.last_applied.map(rfc3339),
            "keys_seq": trust.seq,
            "last_trusted_time": s.last_trusted_time.map(rfc3339),
            "users": s.users.len(),
            "grants": s.grants.len(),
            "revoked": s.revoked.len(),
            "parts": lock(&self.inner.parts).progress(),
            "rejection": book.last_rejection.as_ref().map(|r| json!({
                "kind": r.kind,
                "reason": r.reason.as_str(),
                "message": r.message,
                "at": rfc3339(r.at),
                "source": r.source,
                "seq": r.seq,
            })),
        })
    }
}
