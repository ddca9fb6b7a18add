//! The site owner's control over service businesses: suspending and restoring every grant held
//! by the users of one business on this box.
//!
//! Owns the `business_suspensions` table. A suspension takes effect at once and offline: it is
//! stored, the access-state owner rebuilds the authorization index with it (`authz` then denies every grant of the
//! business's users, and every delegation from them, with `business_suspended`), it is audited
//! (the audit record also goes to the cloud on `…/events`) and the full list of suspensions is
//! published retained on `…/suspensions`. It survives restarts and later bundles: only the site
//! owner (see [`Index::is_owner`]) lifts it, on the API or with the CLI. Users of a business are
//! never the owner (a bundle naming both is malformed), so no user of the suspended business can
//! lift it, whatever role they hold.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{Audit, Event};
use crate::authz::Index;
use crate::authz::owner::SuspensionWriter;
use crate::clock::{SharedClock, from_unix_ms, rfc3339, unix_ms};
use crate::model::{BusinessId, UserId};
use crate::outbox::{self, Class};
use crate::store::{Store, StoreError};

/// Longest note on a suspension.
pub const MAX_NOTE_CHARS: usize = 500;

/// A suspension note: at most [`MAX_NOTE_CHARS`] characters.
pub fn check_note(note: Option<&str>) -> Result<(), BusinessError> {
    if note.is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS) {
        return Err(BusinessError::NoteTooLong);
    }
    Ok(())
}

/// One suspension in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suspension {
    pub business: BusinessId,
    #[serde(with = "time::serde::rfc3339")]
    pub suspended_at: OffsetDateTime,
    /// Audit actor that suspended it (a user id, or `cli:<user id>`).
    pub suspended_by: String,
    pub note: String,
    /// Users that belonged to the business when it was suspended.
    pub members: Vec<UserId>,
}

/// A business as the owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusinessInfo {
    pub business: BusinessId,
    /// Users of the business in the current access state.
    pub members: Vec<UserId>,
    pub suspended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspension: Option<Suspension>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusinessError {
    /// The actor is not the site owner (`reason`: `not_site_owner` or `business_member`).
    #[error("only the site owner may suspend or restore a service business")]
    NotOwner { reason: &'static str },
    /// No user of the applied state belongs to this business and it is not suspended.
    #[error("no such business on this site")]
    UnknownBusiness,
    /// Restoring a business that is not suspended.
    #[error("the business is not suspended")]
    NotSuspended,
    #[error("note is longer than {MAX_NOTE_CHARS} characters")]
    NoteTooLong,
    #[error("storage failed: {0}")]
    Store(String),
}

impl BusinessError {
    /// Stable machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            BusinessError::NotOwner { .. } => "forbidden",
            BusinessError::UnknownBusiness => "business_not_found",
            BusinessError::NotSuspended => "not_suspended",
            BusinessError::NoteTooLong => "note_too_long",
            BusinessError::Store(_) => "internal",
        }
    }
}

impl From<StoreError> for BusinessError {
    fn from(e: StoreError) -> Self {
        BusinessError::Store(e.to_string())
    }
}

/// Whether a suspension operation changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The business was suspended (or restored) by this call.
    Done(Suspension),
    /// It already was (suspending twice keeps the first suspension).
    Unchanged(Suspension),
}

/// Reads every suspension in force, oldest first. A row that does not parse is kept as a
/// suspension of its business with no recorded members (deny-safe); an unreadable business id
/// cannot name anyone and is skipped.
pub fn load(c: &Connection) -> Result<Vec<Suspension>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT business, suspended_ms, suspended_by, note, members FROM business_suspensions
         ORDER BY suspended_ms, business",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (b, at, by, note, members) = row?;
        let Ok(business) = BusinessId::new(b) else {
            tracing::error!("ignoring a stored suspension with an unreadable business id");
            continue;
        };
        let members: Vec<UserId> = serde_json::from_str(&members).unwrap_or_default();
        out.push(Suspension {
            business,
            suspended_at: from_unix_ms(at),
            suspended_by: by,
            note,
            members,
        });
    }
    Ok(out)
}

/// The authorization input for a set of suspensions.
pub fn authz_input(list: &[Suspension]) -> Vec<(BusinessId, Vec<UserId>)> {
    list.iter()
        .map(|s| (s.business.clone(), s.members.clone()))
        .collect()
}

/// Why `actor` may not suspend or restore, `None` if they are the site owner.
pub fn owner_refusal(ix: &Index, actor: &UserId) -> Option<&'static str> {
    if ix.is_owner(actor) {
        return None;
    }
    let member = ix.user(actor).is_some_and(|u| u.business.is_some()) || ix.is_suspended(actor);
    Some(if member {
        "business_member"
    } else {
        "not_site_owner"
    })
}

/// The retained `…/suspensions` document: every suspension in force.
fn state_payload(list: &[Suspension], now: OffsetDateTime) -> Vec<u8> {
    serde_json::to_vec(&json!({ "suspended": list, "at": rfc3339(now) })).unwrap_or_default()
}

/// Suspends `business` in one transaction: row, audit record, retained state message.
/// `members` are the business's users in the current access state.
#[allow(
    clippy::too_many_arguments,
    reason = "one transaction's inputs, shared by the daemon and the CLI"
)]
pub fn suspend_in(
    c: &mut Connection,
    audit: &Audit,
    state_topic: Option<&str>,
    business: &BusinessId,
    members: &[UserId],
    actor: &str,
    note: &str,
    now: OffsetDateTime,
) -> Result<Change, StoreError> {
    let tx = c.transaction()?;
    if let Some(existing) = load(&tx)?.into_iter().find(|s| s.business == *business) {
        return Ok(Change::Unchanged(existing));
    }
    let members_json =
        serde_json::to_string(members).map_err(|e| StoreError::Corrupt(format!("members: {e}")))?;
    tx.execute(
        "INSERT INTO business_suspensions(business, suspended_ms, suspended_by, note, members)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![business.as_str(), unix_ms(now), actor, note, members_json],
    )?;
    let ev = Event::new("business_suspended", "ok")
        .actor(actor.to_string())
        .detail(json!({"business": business.as_str(), "members": members, "note": note}));
    audit.record_in(&tx, &ev)?;
    let list = load(&tx)?;
    if let Some(t) = state_topic {
        let id = format!("susp-{}", crate::util::random_hex(12));
        outbox::enqueue(
            &tx,
            Class::State,
            &id,
            t,
            &state_payload(&list, now),
            true,
            true,
        )?;
    }
    tx.commit()?;
    let s = list
        .into_iter()
        .find(|s| s.business == *business)
        .ok_or_else(|| StoreError::Corrupt("suspension vanished".into()))?;
    Ok(Change::Done(s))
}

/// Restores `business` in one transaction: row removed, audit record, retained state message.
/// `None` if it was not suspended.
pub fn restore_in(
    c: &mut Connection,
    audit: &Audit,
    state_topic: Option<&str>,
    business: &BusinessId,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<Suspension>, StoreError> {
    let tx = c.transaction()?;
    let Some(existing) = load(&tx)?.into_iter().find(|s| s.business == *business) else {
        return Ok(None);
    };
    tx.execute(
        "DELETE FROM business_suspensions WHERE business = ?1",
        [business.as_str()],
    )?;
    let ev = Event::new("business_restored", "ok")
        .actor(actor.to_string())
        .detail(json!({
            "business": business.as_str(),
            "suspended_at": rfc3339(existing.suspended_at),
            "suspended_by": existing.suspended_by,
        }));
    audit.record_in(&tx, &ev)?;
    if let Some(t) = state_topic {
        let list = load(&tx)?;
        let id = format!("susp-{}", crate::util::random_hex(12));
        outbox::enqueue(
            &tx,
            Class::State,
            &id,
            t,
            &state_payload(&list, now),
            true,
            true,
        )?;
    }
    tx.commit()?;
    Ok(Some(existing))
}

/// Whether a suspension row exists (for the CLI's and tests' checks).
pub fn is_suspended_in(c: &Connection, business: &BusinessId) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT 1 FROM business_suspensions WHERE business = ?1",
        [business.as_str()],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// The suspension service the daemon runs. Cheap to clone.
#[derive(Clone)]
pub struct Businesses {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    audit: Audit,
    /// The access-state owner's one writer of suspensions; reads go to its owner.
    suspensions: SuspensionWriter,
    clock: SharedClock,
    /// `sitegate/v1/{site}/{gateway}/suspensions`, or `None` before provisioning.
    state_topic: Option<String>,
}

impl Businesses {
    /// Opens the service and hands the stored suspensions to the access-state owner through
    /// `suspensions`, its writer of suspensions.
    pub fn new(
        store: Store,
        audit: Audit,
        suspensions: SuspensionWriter,
        clock: SharedClock,
        state_topic: Option<String>,
    ) -> Result<Businesses, BusinessError> {
        let b = Businesses {
            inner: Arc::new(Inner {
                store,
                audit,
                suspensions,
                clock,
                state_topic,
            }),
        };
        b.refresh()?;
        Ok(b)
    }

    /// Re-reads the stored suspensions (the CLI may have changed them) and rebuilds the index if
    /// they differ from what it holds. Blocking. Returns whether anything changed.
    pub fn refresh(&self) -> Result<bool, BusinessError> {
        let list = self.inner.store.with_conn(|c| load(c))?;
        Ok(self.inner.suspensions.set_suspended(authz_input(&list)))
    }

    fn check_owner(&self, ix: &Index, actor: &UserId) -> Result<(), BusinessError> {
        match owner_refusal(ix, actor) {
            None => Ok(()),
            Some(reason) => Err(BusinessError::NotOwner { reason }),
        }
    }

    async fn audit_refusal(&self, kind: &'static str, actor: &UserId, business: &str, why: &str) {
        let ev = Event::new(kind, "denied")
            .actor(actor.to_string())
            .detail(json!({"business": business, "reason": why}));
        let _ = self.inner.audit.record(ev).await;
    }

    /// Every business known to the current access state or suspended here (owner only).
    pub async fn list(&self, actor: &UserId) -> Result<Vec<BusinessInfo>, BusinessError> {
        let ix = self.inner.suspensions.owner().index();
        if let Err(e) = self.check_owner(&ix, actor) {
            if let BusinessError::NotOwner { reason } = &e {
                self.audit_refusal("business_list", actor, "", reason).await;
            }
            return Err(e);
        }
        let suspended = self.inner.store.call(|c| load(c)).await?;
        let mut known = ix.businesses();
        for s in &suspended {
            known.entry(s.business.clone()).or_default();
        }
        Ok(known
            .into_iter()
            .map(|(business, members)| {
                let suspension = suspended.iter().find(|s| s.business == business).cloned();
                BusinessInfo {
                    business,
                    members,
                    suspended: suspension.is_some(),
                    suspension,
                }
            })
            .collect())
    }

    /// Suspends every grant held by `business`'s users on this box (owner only). Idempotent:
    /// suspending a suspended business returns the existing suspension.
    ///
    /// The business is named as text and checked only after the actor is known to be the owner,
    /// so nobody else learns which names are valid or known.
    pub async fn suspend(
        &self,
        actor: &UserId,
        business: &str,
        note: Option<String>,
    ) -> Result<Change, BusinessError> {
        let ix = self.inner.suspensions.owner().index();
        if let Err(e) = self.check_owner(&ix, actor) {
            if let BusinessError::NotOwner { reason } = &e {
                let named = crate::audit::cap_str(business).into_owned();
                self.audit_refusal("business_suspended", actor, &named, reason)
                    .await;
            }
            return Err(e);
        }
        let Ok(business) = BusinessId::new(business) else {
            return Err(BusinessError::UnknownBusiness);
        };
        let business = &business;
        check_note(note.as_deref())?;
        let note = note.unwrap_or_default();
        let members = ix.businesses().remove(business);
        let b = business.clone();
        let already = self
            .inner
            .store
            .call(move |c| is_suspended_in(c, &b))
            .await?;
        if members.is_none() && !already {
            self.audit_refusal(
                "business_suspended",
                actor,
                business.as_str(),
                "unknown_business",
            )
            .await;
            return Err(BusinessError::UnknownBusiness);
        }
        let members = members.unwrap_or_default();
        let (audit, topic) = (self.inner.audit.clone(), self.inner.state_topic.clone());
        let (b, who, now) = (business.clone(), actor.to_string(), self.inner.clock.now());
        let change = self
            .inner
            .store
            .call(move |c| suspend_in(c, &audit, topic.as_deref(), &b, &members, &who, &note, now))
            .await?;
        // Swap the index before answering: the suspension bites the next request.
        self.refresh()?;
        Ok(change)
    }

    /// Lifts a suspension (owner only).
    pub async fn restore(
        &self,
        actor: &UserId,
        business: &str,
    ) -> Result<Suspension, BusinessError> {
        let ix = self.inner.suspensions.owner().index();
        if let Err(e) = self.check_owner(&ix, actor) {
            if let BusinessError::NotOwner { reason } = &e {
                let named = crate::audit::cap_str(business).into_owned();
                self.audit_refusal("business_restored", actor, &named, reason)
                    .await;
            }
            return Err(e);
        }
        let Ok(business) = BusinessId::new(business) else {
            return Err(BusinessError::NotSuspended);
        };
        let business = &business;
        let (audit, topic) = (self.inner.audit.clone(), self.inner.state_topic.clone());
        let (b, who, now) = (business.clone(), actor.to_string(), self.inner.clock.now());
        let out = self
            .inner
            .store
            .call(move |c| restore_in(c, &audit, topic.as_deref(), &b, &who, now))
            .await?;
        self.refresh()?;
        out.ok_or(BusinessError::NotSuspended)
    }
}

#[cfg(test)]
mod tests;
