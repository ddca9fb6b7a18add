//! Signed access grants: the only way access state enters the box from the cloud.
//!
//! This module owns the envelope format (`envelope`), the trust key set and its rotation
//! (`trust`), the payload schemas and their verifying constructors (`bundle`), the PBKDF2 password
//! verifier format (`password`), the engine that applies verified bundles atomically and publishes
//! the resulting [`AccessState`](crate::access::AccessState) (`engine`), and the fleet tool that
//! signs them (`fleet`). See `docs/grants.md` for the wire format.
//!
//! It must never parse a payload before its signature verified, never verify against a key that
//! did not come from the config, `sitegate trust import` or a verified key set, never move the
//! clock floor with unsigned time, and never leave half of a bundle applied: every rejection
//! leaves the previous state untouched and is audited with a machine-readable reason.

pub mod bundle;
pub mod ed25519;
pub mod engine;
pub mod envelope;
pub mod fleet;
pub mod parts;
pub mod password;
pub mod publish;
pub mod strict_json;
pub mod trust;

use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;

use crate::store::StoreError;

pub use bundle::{VerifiedBundle, VerifiedToken};
pub use ed25519::{KeyProblem, PublicKey, SignatureProblem};
pub use engine::{ApplyOutcome, GrantEngine};
pub use envelope::{KeyError, KeyProvider, Kind};
pub use trust::{TrustSet, TrustedKey, VerifiedKeys};

/// Largest envelope accepted, checked before any parsing.
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;
/// Most users in one bundle.
pub const MAX_USERS: usize = 20_000;
/// Most grants in one bundle.
pub const MAX_GRANTS: usize = 50_000;
/// Most revoked grant ids in one bundle.
pub const MAX_REVOKED: usize = 50_000;
/// Most keys in one key set, and most signatures on one keys envelope.
pub const MAX_KEYS: usize = 16;
/// Longest e-mail address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest display name.
pub const MAX_NAME_LEN: usize = 200;
/// Longest password verifier string.
pub const MAX_VERIFIER_LEN: usize = 256;
/// Longest `max_offline` duration (ten years).
pub const MAX_OFFLINE_SECS: u64 = 10 * 366 * 86_400;

/// Why an envelope was refused. The string form (`reason` in audit events and in
/// `…/grants/state`) is stable: cloud integrators match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The signature does not verify with the named key.
    BadSignature,
    /// The `kid` is not in the trusted key set.
    UnknownKey,
    /// The key was retired by a key rotation, or is past its `not_after`.
    RetiredKey,
    /// The payload is for another site (or a grant's site scope names another site).
    WrongSite,
    /// A bundle (or key set) that was applied before, sent again after a newer one.
    Replay,
    /// A `seq` lower than the applied one.
    Rollback,
    /// The same `seq` as the applied one with different bytes (raised as an alarm).
    Equivocation,
    /// `issued_at` further in the future than the configured skew.
    FutureDated,
    /// The envelope is larger than [`MAX_ENVELOPE_BYTES`], or a list exceeds its limit.
    TooLarge,
    /// Not the expected JSON shape, bad base64, bad field value, a key repeated in a JSON object.
    Malformed,
    /// Two users, grants, e-mails or keys with the same id.
    DuplicateId,
    /// A grant names a user that the payload does not define.
    UnknownUser,
    /// The envelope's kind is not the one expected here (or not a known kind at all).
    WrongKind,
    /// Envelope version other than 1.
    UnsupportedVersion,
    /// A keys envelope lacks the signature of a newly added key (proof of possession).
    MissingSignature,
    /// An installer token whose grant was revoked.
    Revoked,
    /// An installer token whose grant expired (judged at the clock floor) or is not yet valid.
    Expired,
    /// The database failed while applying; nothing was changed.
    Storage,
    /// A public key that is small-order, has a small-order component, is not canonically
    /// encoded or is not on the curve (see `ed25519`).
    WeakKey,
    /// A signature with `S` >= L or an `R` that is not a canonical point of large order.
    NonCanonicalSignature,
    /// A part of a bundle sent in parts whose bytes are not the ones its verified manifest lists,
    /// or that names another manifest than the one in force for its seq (see `parts`).
    PartMismatch,
    /// A bundle sent in parts that did not complete (a part missing when a newer manifest came,
    /// or after ten minutes); nothing of it was applied.
    Incomplete,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKey => "unknown_key",
            Reason::RetiredKey => "retired_key",
            Reason::WrongSite => "wrong_site",
            Reason::Replay => "replay",
            Reason::Rollback => "rollback",
            Reason::Equivocation => "equivocation",
            Reason::FutureDated => "future_dated",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::DuplicateId => "duplicate_id",
            Reason::UnknownUser => "unknown_user",
            Reason::WrongKind => "wrong_kind",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::MissingSignature => "missing_signature",
            Reason::Revoked => "revoked",
            Reason::Expired => "expired",
            Reason::Storage => "storage",
            Reason::WeakKey => "weak_key",
            Reason::NonCanonicalSignature => "non_canonical_signature",
            Reason::PartMismatch => "part_mismatch",
            Reason::Incomplete => "incomplete",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused envelope: a stable reason code and a human-readable message (safe to show; it never
/// contains key material and quotes at most short identifiers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    /// Longest message kept (parser errors can quote attacker-chosen text).
    pub const MAX_MESSAGE: usize = 300;

    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > Self::MAX_MESSAGE {
            let mut cut = Self::MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Rejection { reason, message }
    }
}

/// Shorthand for building a rejection.
pub(crate) fn reject<T>(reason: Reason, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::new(reason, message))
}

/// Errors of the grants module outside envelope verification (opening the engine, importing
/// keys, the fleet tool's file handling).
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Rejected(#[from] Rejection),
    #[error("trust key `{kid}`: {message}")]
    Trust { kid: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// How far the system clock may go back below the newest time it showed (the high-water mark)
/// without raising `clock_rollback`: small NTP corrections. Expiry is never judged earlier than
/// the mark minus this. The daemon persists the mark every minute.
pub const CLOCK_TOLERANCE: time::Duration = time::Duration::seconds(60);

/// The signed-time part of the box's effective time: the later of `clock_now` and the clock
/// floor (the newest signed `issued_at` accepted). The daemon judges expiry on the full effective
/// time of [`crate::clock::TrustedClock`], which also never goes below the persisted high-water
/// mark minus [`CLOCK_TOLERANCE`].
pub fn effective_now(
    clock_now: OffsetDateTime,
    last_trusted_time: Option<OffsetDateTime>,
) -> OffsetDateTime {
    match last_trusted_time {
        Some(floor) if floor > clock_now => floor,
        _ => clock_now,
    }
}

/// Shortens user-controlled text before it goes into a message.
pub(crate) fn short(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

// Here rather than in `ed25519.rs`, so that the key checks stay a leaf module that the config
// layer can use without importing the grants engine.
impl KeyProblem {
    /// The rejection reason: a malformed encoding or a weak key.
    pub fn reason(self) -> Reason {
        match self {
            KeyProblem::Encoding | KeyProblem::Length => Reason::Malformed,
            _ => Reason::WeakKey,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn effective_now_never_goes_below_the_floor() {
        let floor = datetime!(2026-11-26 12:00 UTC);
        assert_eq!(
            effective_now(datetime!(2020-01-01 0:00 UTC), Some(floor)),
            floor
        );
        let later = datetime!(2027-01-01 0:00 UTC);
        assert_eq!(effective_now(later, Some(floor)), later);
        assert_eq!(effective_now(later, None), later);
    }

    #[test]
    fn reason_codes_serialize_as_their_stable_strings() {
        for r in [
            Reason::BadSignature,
            Reason::UnsupportedVersion,
            Reason::MissingSignature,
            Reason::WeakKey,
            Reason::NonCanonicalSignature,
        ] {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
    }
}
