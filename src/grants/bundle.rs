//! Payload schemas of `bundle` and `token` envelopes and their verifying constructors.
//!
//! [`VerifiedBundle::verify`] and [`VerifiedToken::verify`] are the only ways to hold those
//! types: they check the envelope signature first, and only then parse the payload with serde
//! (unknown fields denied, depth bounded by the typed structs) and validate it (counts, string
//! lengths, duplicate ids, grants for unknown users, password verifier format). Checks that need
//! the box's state (site, seq, clock) belong to the engine.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::envelope::{KeyProvider, Kind, open_and_verify_single};
use super::{
    MAX_EMAIL_LEN, MAX_GRANTS, MAX_NAME_LEN, MAX_OFFLINE_SECS, MAX_REVOKED, MAX_USERS,
    MAX_VERIFIER_LEN, Reason, Rejection, reject, short,
};
use crate::access::{Grant, Origin, Policy, User};
use crate::model::{
    BusinessId, CapSet, Capability, GrantId, Management, Role, Scope, SiteId, UserId,
};

/// A user as the wire carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserWire {
    pub id: UserId,
    pub email: String,
    #[serde(default)]
    pub name: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The service business the user belongs to (absent: the site's own people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business: Option<BusinessId>,
    /// The site owner (bundles only; never together with `business`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner: bool,
}

/// A grant as the wire carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantWire {
    pub id: GrantId,
    pub user: UserId,
    pub role: Role,
    pub scope: Scope,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_before: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
}

/// A `max_offline` value: whole seconds, or a text duration such as `"30d"`, `"12h"`, `"1d12h"`
/// (units `s`, `m`, `h`, `d`, `w`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationWire {
    Secs(u64),
    Text(String),
}

impl DurationWire {
    fn seconds(&self) -> Result<u64, String> {
        let secs = match self {
            DurationWire::Secs(s) => *s,
            DurationWire::Text(t) => parse_duration(t)?,
        };
        if secs > MAX_OFFLINE_SECS {
            return Err(format!(
                "duration must be at most {MAX_OFFLINE_SECS} seconds"
            ));
        }
        Ok(secs)
    }
}

/// Parses `30d`, `12h`, `1d12h`, `90m`, `45s`, `2w`.
pub fn parse_duration(t: &str) -> Result<u64, String> {
    let bad = || format!("`{}` is not a duration like `30d` or `12h`", short(t));
    if t.is_empty() || t.len() > 32 {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in t.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if num.is_some() {
        return Err(bad());
    }
    Ok(total)
}

/// The signed site policy as the wire carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyWire {
    pub management: Management,
    pub features: Vec<Capability>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_offline: BTreeMap<Role, DurationWire>,
}

/// Bundle payload: a full snapshot of the site's access state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleWire {
    pub site: SiteId,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub policy: PolicyWire,
    #[serde(default)]
    pub users: Vec<UserWire>,
    #[serde(default)]
    pub grants: Vec<GrantWire>,
    #[serde(default)]
    pub revoked: Vec<GrantId>,
    /// Ids of pending access requests (and pro-site delegations) the cloud refuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests_denied: Vec<String>,
}

/// Installer token payload: one user and one grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenWire {
    pub site: SiteId,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub user: UserWire,
    pub grant: GrantWire,
}

/// A verified, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub site: SiteId,
    pub seq: u64,
    pub issued_at: OffsetDateTime,
    pub policy: Policy,
    pub users: Vec<User>,
    pub grants: Vec<Grant>,
    pub revoked: Vec<GrantId>,
    pub requests_denied: Vec<String>,
}

/// A bundle envelope whose signature verified and whose payload is valid. Only
/// [`VerifiedBundle::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    kid: String,
    envelope: Vec<u8>,
    payload_sha256: String,
    bundle: Bundle,
}

impl VerifiedBundle {
    /// Verifies the envelope with the key `keys` chooses, then parses and validates the payload.
    pub fn verify(bytes: &[u8], keys: &dyn KeyProvider) -> Result<VerifiedBundle, Rejection> {
        let (kid, payload) = open_and_verify_single(bytes, Kind::Bundle, keys)?;
        let wire: BundleWire = parse_json(&payload, "bundle")?;
        let bundle = validate_bundle(wire)?;
        Ok(VerifiedBundle {
            kid,
            envelope: bytes.to_vec(),
            payload_sha256: crate::util::sha256_hex(&payload),
            bundle,
        })
    }
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The exact envelope bytes received (stored so that the box can re-verify on start).
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
    /// SHA-256 of the signed payload bytes, hex: what "identical bytes" compares.
    pub fn payload_sha256(&self) -> &str {
        &self.payload_sha256
    }
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }
}

/// A verified installer token. Only [`VerifiedToken::verify`] makes one; the engine's
/// `verify_token` also checks site, revocation and expiry.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    kid: String,
    envelope: Vec<u8>,
    pub site: SiteId,
    pub issued_at: OffsetDateTime,
    pub user: User,
    pub grant: Grant,
}

impl VerifiedToken {
    /// Verifies the envelope with the key `keys` chooses, then parses and validates the payload.
    pub fn verify(bytes: &[u8], keys: &dyn KeyProvider) -> Result<VerifiedToken, Rejection> {
        let (kid, payload) = open_and_verify_single(bytes, Kind::Token, keys)?;
        let wire: TokenWire = parse_json(&payload, "token")?;
        let user = validate_token_user(wire.user)?;
        let grant = validate_grant(wire.grant, &wire.site, Origin::Token)?;
        if grant.user != user.id {
            return reject(
                Reason::UnknownUser,
                format!(
                    "token grant `{}` is for user `{}`, not the token's user `{}`",
                    grant.id, grant.user, user.id
                ),
            );
        }
        if grant.expires_at.is_none() {
            return reject(
                Reason::Malformed,
                format!("token grant `{}` has no `expires_at`", grant.id),
            );
        }
        Ok(VerifiedToken {
            kid,
            envelope: bytes.to_vec(),
            site: wire.site,
            issued_at: wire.issued_at,
            user,
            grant,
        })
    }
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
}

/// Parses verified payload bytes into `T`, mapping every serde error to `malformed`.
/// The one place a payload is parsed: first the strict pass (no key repeated in any object, see
/// `strict_json`), then the typed parse.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    what: &str,
) -> Result<T, Rejection> {
    super::strict_json::check(payload)
        .and_then(|()| serde_json::from_slice(payload))
        .map_err(|e| Rejection::new(Reason::Malformed, format!("{what} payload: {e}")))
}

fn validate_user(u: UserWire) -> Result<User, Rejection> {
    let email = u.email.trim().to_lowercase();
    let email_ok = email.len() <= MAX_EMAIL_LEN
        && !email.is_empty()
        && email.chars().filter(|c| *c == '@').count() == 1
        && !email.starts_with('@')
        && !email.ends_with('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !email_ok {
        return reject(
            Reason::Malformed,
            format!("user `{}` has an invalid e-mail address", u.id),
        );
    }
    if u.name.chars().count() > MAX_NAME_LEN || u.name.chars().any(char::is_control) {
        return reject(
            Reason::Malformed,
            format!(
                "user `{}` name must be at most {MAX_NAME_LEN} characters without control characters",
                u.id
            ),
        );
    }
    if let Some(p) = &u.password {
        if p.len() > MAX_VERIFIER_LEN {
            return reject(
                Reason::Malformed,
                format!("user `{}` password verifier is too long", u.id),
            );
        }
        super::password::parse_verifier(p)
            .map_err(|e| Rejection::new(Reason::Malformed, format!("user `{}`: {e}", u.id)))?;
    }
    if u.owner && u.business.is_some() {
        return reject(
            Reason::Malformed,
            format!(
                "user `{}` cannot be the site owner and belong to a service business",
                u.id
            ),
        );
    }
    Ok(User {
        id: u.id,
        email,
        name: u.name,
        active: u.active,
        password: u.password,
        business: u.business,
        owner: u.owner,
    })
}

/// A token's user: like a bundle user, but never the site owner (ownership comes only from the
/// site's bundle, so a token handed to an installer cannot carry it).
fn validate_token_user(u: UserWire) -> Result<User, Rejection> {
    if u.owner {
        return reject(
            Reason::Malformed,
            format!("token user `{}` cannot be the site owner", u.id),
        );
    }
    validate_user(u)
}

fn validate_grant(g: GrantWire, site: &SiteId, origin: Origin) -> Result<Grant, Rejection> {
    if let Scope::Site(s) = &g.scope {
        if s != site {
            return reject(
                Reason::WrongSite,
                format!("grant `{}` is scoped to site `{s}`, not `{site}`", g.id),
            );
        }
    }
    if let (Some(nb), Some(exp)) = (g.not_before, g.expires_at) {
        if nb >= exp {
            return reject(
                Reason::Malformed,
                format!("grant `{}` expires before it becomes valid", g.id),
            );
        }
    }
    Ok(Grant {
        id: g.id,
        user: g.user,
        role: g.role,
        scope: g.scope,
        not_before: g.not_before,
        expires_at: g.expires_at,
        origin,
    })
}

fn validate_policy(p: PolicyWire) -> Result<Policy, Rejection> {
    let mut features = CapSet::EMPTY;
    for f in p.features {
        features.insert(f);
    }
    let mut max_offline = BTreeMap::new();
    for (role, d) in p.max_offline {
        let secs = d.seconds().map_err(|e| {
            Rejection::new(Reason::Malformed, format!("policy.max_offline.{role}: {e}"))
        })?;
        let secs = i64::try_from(secs)
            .map_err(|_| Rejection::new(Reason::Malformed, "max_offline out of range"))?;
        max_offline.insert(role, time::Duration::seconds(secs));
    }
    Ok(Policy {
        management: p.management,
        features,
        max_offline,
    })
}

fn validate_bundle(w: BundleWire) -> Result<Bundle, Rejection> {
    if w.users.len() > MAX_USERS || w.grants.len() > MAX_GRANTS || w.revoked.len() > MAX_REVOKED {
        return reject(
            Reason::TooLarge,
            format!(
                "bundle has {} users, {} grants, {} revocations (limits {MAX_USERS}, {MAX_GRANTS}, {MAX_REVOKED})",
                w.users.len(),
                w.grants.len(),
                w.revoked.len()
            ),
        );
    }
    if w.seq == 0 {
        return reject(Reason::Malformed, "bundle `seq` must be at least 1");
    }
    let policy = validate_policy(w.policy)?;
    let mut user_ids = HashSet::with_capacity(w.users.len());
    let mut emails = HashSet::with_capacity(w.users.len());
    let mut users = Vec::with_capacity(w.users.len());
    for u in w.users {
        let u = validate_user(u)?;
        if !user_ids.insert(u.id.clone()) {
            return reject(
                Reason::DuplicateId,
                format!("user `{}` appears twice", u.id),
            );
        }
        if !emails.insert(u.email.clone()) {
            return reject(
                Reason::DuplicateId,
                format!("two users share the e-mail address of user `{}`", u.id),
            );
        }
        users.push(u);
    }
    let mut grant_ids = HashSet::with_capacity(w.grants.len());
    let mut grants = Vec::with_capacity(w.grants.len());
    for g in w.grants {
        let g = validate_grant(g, &w.site, Origin::Cloud)?;
        if !grant_ids.insert(g.id.clone()) {
            return reject(
                Reason::DuplicateId,
                format!("grant `{}` appears twice", g.id),
            );
        }
        if !user_ids.contains(&g.user) {
            return reject(
                Reason::UnknownUser,
                format!(
                    "grant `{}` is for user `{}`, who is not in the bundle",
                    g.id, g.user
                ),
            );
        }
        grants.push(g);
    }
    if w.requests_denied.len() > MAX_REVOKED {
        return reject(
            Reason::TooLarge,
            format!(
                "bundle denies {} requests (limit {MAX_REVOKED})",
                w.requests_denied.len()
            ),
        );
    }
    let mut denied_set = HashSet::with_capacity(w.requests_denied.len());
    for r in &w.requests_denied {
        let ok = !r.is_empty()
            && r.len() <= 64
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return reject(
                Reason::Malformed,
                format!("`requests_denied` entry `{}` is not a request id", short(r)),
            );
        }
        if !denied_set.insert(r) {
            return reject(
                Reason::DuplicateId,
                format!("denied request `{r}` appears twice"),
            );
        }
    }
    let mut revoked_set = HashSet::with_capacity(w.revoked.len());
    for r in &w.revoked {
        if !revoked_set.insert(r) {
            return reject(
                Reason::DuplicateId,
                format!("revocation `{r}` appears twice"),
            );
        }
    }
    Ok(Bundle {
        site: w.site,
        seq: w.seq,
        issued_at: w.issued_at,
        policy,
        users,
        grants,
        revoked: w.revoked,
        requests_denied: w.requests_denied,
    })
}

/// Checks a bundle description before signing (the fleet tool): the same validation the box does,
/// without the signature.
pub fn check_bundle_payload(payload: &[u8]) -> Result<Bundle, Rejection> {
    let wire: BundleWire = parse_json(payload, "bundle")?;
    validate_bundle(wire)
}

/// Checks a token description before signing (the fleet tool).
pub fn check_token_payload(payload: &[u8]) -> Result<(), Rejection> {
    let wire: TokenWire = parse_json(payload, "token")?;
    let user = validate_token_user(wire.user)?;
    let grant = validate_grant(wire.grant, &wire.site, Origin::Token)?;
    if grant.user != user.id {
        return reject(Reason::UnknownUser, "token grant is for another user");
    }
    if grant.expires_at.is_none() {
        return reject(Reason::Malformed, "token grant has no `expires_at`");
    }
    Ok(())
}

/// Rebuilds the wire form of a policy (stored in `meta` and shown in status output).
pub fn policy_to_json(p: &Policy) -> serde_json::Value {
    let max: BTreeMap<&str, i64> = p
        .max_offline
        .iter()
        .map(|(r, d)| (r.as_str(), d.whole_seconds()))
        .collect();
    serde_json::json!({
        "management": p.management,
        "features": p.features,
        "max_offline": max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_both_forms() {
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("1d12h").unwrap(), 86_400 + 12 * 3600);
        assert_eq!(parse_duration("90m").unwrap(), 5400);
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(DurationWire::Secs(MAX_OFFLINE_SECS + 1).seconds().is_err());
    }

    #[test]
    fn business_and_owner_are_optional_user_fields_and_never_combined() {
        let with = |user: &str| {
            format!(
                r#"{{"site":"s-1","seq":1,"issued_at":"2026-11-23T20:00:00Z",
                "policy":{{"management":"pro","features":["view"]}},
                "users":[{user}]}}"#
            )
        };
        let old = with(r#"{"id":"u-1","email":"a@x","active":true}"#);
        let b = check_bundle_payload(old.as_bytes()).unwrap();
        assert_eq!(
            (b.users[0].business.clone(), b.users[0].owner),
            (None, false)
        );
        let pro = with(r#"{"id":"u-1","email":"a@x","active":true,"business":"acme-service"}"#);
        let b = check_bundle_payload(pro.as_bytes()).unwrap();
        assert_eq!(
            b.users[0].business.as_ref().unwrap().as_str(),
            "acme-service"
        );
        let own = with(r#"{"id":"u-1","email":"a@x","active":true,"owner":true}"#);
        assert!(check_bundle_payload(own.as_bytes()).unwrap().users[0].owner);
        let both = with(
            r#"{"id":"u-1","email":"a@x","active":true,"owner":true,"business":"acme-service"}"#,
        );
        assert_eq!(
            check_bundle_payload(both.as_bytes()).unwrap_err().reason,
            Reason::Malformed
        );
        let bad_id = with(r#"{"id":"u-1","email":"a@x","active":true,"business":"a/b"}"#);
        assert_eq!(
            check_bundle_payload(bad_id.as_bytes()).unwrap_err().reason,
            Reason::Malformed
        );
        let token_owner = br#"{"site":"s-1","issued_at":"2026-11-23T20:00:00Z",
            "user":{"id":"u-1","email":"a@x","active":true,"owner":true},
            "grant":{"id":"t-1","user":"u-1","role":"technician","scope":{"site":"s-1"},
                     "expires_at":"2026-11-24T20:00:00Z"}}"#;
        assert_eq!(
            check_token_payload(token_owner).unwrap_err().reason,
            Reason::Malformed
        );
    }

    #[test]
    fn a_bundle_description_is_validated_before_signing() {
        let ok = br#"{"site":"s-1","seq":1,"issued_at":"2026-11-23T20:00:00Z",
            "policy":{"management":"pro","features":["view"],"max_offline":{"technician":"30d","admin":86400}},
            "users":[{"id":"u-1","email":"A@Example.com","name":"Ana","active":true}],
            "grants":[{"id":"g-1","user":"u-1","role":"technician","scope":{"site":"s-1"}}],
            "revoked":["g-0"]}"#;
        let b = check_bundle_payload(ok).unwrap();
        assert_eq!(b.users[0].email, "a@example.com");
        assert_eq!(
            b.policy.max_offline.get(&Role::Technician),
            Some(&time::Duration::days(30))
        );
        let dup = br#"{"site":"s-1","seq":1,"issued_at":"2026-11-23T20:00:00Z",
            "policy":{"management":"pro","features":[]},
            "users":[{"id":"u-1","email":"a@x","active":true}],
            "grants":[{"id":"g-1","user":"u-1","role":"viewer","scope":{"site":"s-1"}},
                      {"id":"g-1","user":"u-1","role":"viewer","scope":{"site":"s-1"}}]}"#;
        assert_eq!(
            check_bundle_payload(dup).unwrap_err().reason,
            Reason::DuplicateId
        );
        let extra = br#"{"site":"s-1","seq":1,"issued_at":"2026-11-23T20:00:00Z",
            "policy":{"management":"pro","features":[]},"extra":1}"#;
        assert_eq!(
            check_bundle_payload(extra).unwrap_err().reason,
            Reason::Malformed
        );
    }
}
