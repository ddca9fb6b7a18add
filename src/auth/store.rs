//! SQL for sessions and login throttling (tables of migration 3). Installer tokens are kept by
//! the grants engine (`grant_tokens`).
//!
//! Plain functions over a connection so that callers can put them in one transaction with an
//! audit record. Never stores a bearer token or password, only hashes.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use time::OffsetDateTime;

use super::{AuthError, Method, SessionInfo};
use crate::clock::{from_unix_ms, unix_ms};
use crate::model::UserId;
use crate::store::StoreError;

/// A throttled or locked account or client, as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lockout {
    /// `email:<hash>` for an account, `ip:<addr>` for a client. Pass it to `clear_lockout`.
    pub key: String,
    /// The account's email (known accounts only) or the key.
    pub label: String,
    pub failures: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub last_failure: OffsetDateTime,
    /// Until when every login for it is refused (`None` = only delayed).
    #[serde(with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_allowed: OffsetDateTime,
}

pub(super) fn insert_session(
    c: &Connection,
    hash: &str,
    info: &SessionInfo,
    credential: &str,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO sessions(token_hash, user, method, created_ms, expires_ms, last_seen_ms, client, credential)
         VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6, ?7)",
        params![
            hash,
            info.user.as_str(),
            info.method.as_str(),
            unix_ms(info.created),
            unix_ms(info.expires),
            info.client,
            credential
        ],
    )?;
    Ok(())
}

/// The credential fingerprint a session was opened with.
pub(super) fn session_credential(c: &Connection, hash: &str) -> Result<String, StoreError> {
    Ok(
        c.prepare_cached("SELECT credential FROM sessions WHERE token_hash = ?1")?
            .query_row([hash], |r| r.get::<_, String>(0))
            .optional()?
            .unwrap_or_default(),
    )
}

/// Every session: token hash, user, method and credential fingerprint.
pub(super) fn all_sessions(
    c: &Connection,
) -> Result<Vec<(String, String, Method, String)>, StoreError> {
    let mut stmt = c.prepare("SELECT token_hash, user, method, credential FROM sessions")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            Method::parse(&r.get::<_, String>(2)?),
            r.get::<_, String>(3)?,
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

type SessionRow = (String, SessionInfo, OffsetDateTime);

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SessionRow, String>> {
    let hash: String = r.get(0)?;
    let user: String = r.get(1)?;
    let method: String = r.get(2)?;
    let user = match UserId::new(user) {
        Ok(u) => u,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let info = SessionInfo {
        user,
        id: hash.chars().take(16).collect(),
        method: Method::parse(&method),
        created: from_unix_ms(r.get(3)?),
        expires: from_unix_ms(r.get(4)?),
        client: r.get(6)?,
    };
    Ok(Ok((hash, info, from_unix_ms(r.get(5)?))))
}

pub(super) fn get_session(c: &Connection, hash: &str) -> Result<Option<SessionRow>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT token_hash, user, method, created_ms, expires_ms, last_seen_ms, client
             FROM sessions WHERE token_hash = ?1",
        )?
        .query_row([hash], session_from_row)
        .optional()?;
    match row {
        None => Ok(None),
        Some(Ok(r)) => Ok(Some(r)),
        Some(Err(e)) => Err(StoreError::Corrupt(format!("session row: {e}"))),
    }
}

pub(super) fn sessions_of(c: &Connection, user: &str) -> Result<Vec<SessionInfo>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT token_hash, user, method, created_ms, expires_ms, last_seen_ms, client
         FROM sessions WHERE user = ?1 ORDER BY created_ms",
    )?;
    let rows = stmt.query_map([user], session_from_row)?;
    let mut out = Vec::new();
    for r in rows {
        if let Ok((_, info, _)) = r? {
            out.push(info);
        }
    }
    Ok(out)
}

pub(super) fn delete_session(c: &Connection, hash: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM sessions WHERE token_hash = ?1", [hash])?;
    Ok(())
}

pub(super) fn touch_session(
    c: &Connection,
    hash: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE sessions SET last_seen_ms = ?2 WHERE token_hash = ?1")?
        .execute(params![hash, unix_ms(now)])?;
    Ok(())
}

/// `Err(Locked|Throttled)` if any key is locked or inside its delay.
pub(super) fn check_throttle(
    c: &Connection,
    keys: &[String],
    now: OffsetDateTime,
) -> Result<Result<(), AuthError>, StoreError> {
    let now_ms = unix_ms(now);
    let mut worst: Result<(), AuthError> = Ok(());
    for k in keys {
        let row: Option<(i64, i64)> = c
            .query_row(
                "SELECT next_allowed_ms, locked_until_ms FROM login_throttle WHERE key = ?1",
                [k],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((next, locked)) = row else { continue };
        let wait = |until: i64| {
            std::time::Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(0))
        };
        if locked > now_ms {
            return Ok(Err(AuthError::Locked {
                retry_after: wait(locked),
            }));
        }
        if next > now_ms && worst.is_ok() {
            worst = Err(AuthError::Throttled {
                retry_after: wait(next),
            });
        }
    }
    Ok(worst)
}

/// Counts one failure for `key`; returns whether the key is now locked out.
pub(super) fn fail(
    c: &Connection,
    key: &str,
    label: &str,
    now: OffsetDateTime,
    cfg: &crate::config::Auth,
    lockable: bool,
) -> Result<bool, StoreError> {
    let now_ms = unix_ms(now);
    let lockout_ms = i64::try_from(cfg.lockout.as_millis()).unwrap_or(i64::MAX);
    let row: Option<(i64, i64, i64)> = c
        .query_row(
            "SELECT failures, last_failure_ms, locked_until_ms FROM login_throttle WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let mut failures = match row {
        // A finished lockout, or a quiet period as long as one, starts the count over.
        Some((_, _, locked)) if locked != 0 && now_ms >= locked => 0,
        Some((_, last, _)) if now_ms.saturating_sub(last) > lockout_ms => 0,
        Some((f, _, _)) => f,
        None => 0,
    };
    failures = failures.saturating_add(1);
    let base = u64::try_from(cfg.throttle_base.as_millis()).unwrap_or(u64::MAX);
    let max = u64::try_from(cfg.throttle_max.as_millis()).unwrap_or(u64::MAX);
    let shift = u32::try_from(failures - 1).unwrap_or(u32::MAX).min(40);
    let delay = base.saturating_mul(1u64 << shift).min(max);
    let next = now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    let locked = lockable
        && cfg.lockout_after_failures > 0
        && failures >= i64::from(cfg.lockout_after_failures);
    let locked_until = if locked {
        now_ms.saturating_add(lockout_ms)
    } else {
        0
    };
    c.execute(
        "INSERT INTO login_throttle(key, label, failures, last_failure_ms, next_allowed_ms, locked_until_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(key) DO UPDATE SET label = excluded.label, failures = excluded.failures,
             last_failure_ms = excluded.last_failure_ms, next_allowed_ms = excluded.next_allowed_ms,
             locked_until_ms = excluded.locked_until_ms",
        params![key, label, failures, now_ms, next, locked_until],
    )?;
    Ok(locked)
}

pub(crate) fn clear_throttle(c: &Connection, key: &str) -> Result<usize, StoreError> {
    Ok(c.execute("DELETE FROM login_throttle WHERE key = ?1", [key])?)
}

pub(crate) fn lockouts(c: &Connection, now: OffsetDateTime) -> Result<Vec<Lockout>, StoreError> {
    let now_ms = unix_ms(now);
    let mut stmt = c.prepare(
        "SELECT key, label, failures, last_failure_ms, next_allowed_ms, locked_until_ms
         FROM login_throttle WHERE locked_until_ms > ?1 OR next_allowed_ms > ?1
         ORDER BY locked_until_ms DESC, last_failure_ms DESC LIMIT 1000",
    )?;
    let rows = stmt.query_map([now_ms], |r| {
        let locked: i64 = r.get(5)?;
        Ok(Lockout {
            key: r.get(0)?,
            label: r.get(1)?,
            failures: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
            last_failure: from_unix_ms(r.get(3)?),
            next_allowed: from_unix_ms(r.get(4)?),
            locked_until: (locked > now_ms).then(|| from_unix_ms(locked)),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
