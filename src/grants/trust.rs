//! The trusted key set: which Ed25519 keys may sign bundles, key sets and tokens.
//!
//! Keys enter only three ways: the config's `[[grants.trust]]` (seeded into SQLite while no key
//! rotation has happened yet), `sitegate trust import FILE`, and a verified `kind:"keys"` envelope
//! ([`VerifiedKeys::verify`]), which must be signed by a currently trusted key AND by every key it
//! adds (proof of possession). Keys absent from a new set become retired, permanently. This
//! module never hands out a retired or expired key for verifying new envelopes.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, params};
use serde::Deserialize;
use time::OffsetDateTime;

use super::bundle::parse_json;
use super::ed25519::PublicKey;
use super::envelope::{self, KeyError, KeyProvider, Kind, key_rejection};
use super::{GrantError, MAX_KEYS, Reason, Rejection, reject, short};
use crate::clock::{from_unix_ms, unix_ms};
use crate::store::{Store, StoreError};

/// `meta` key holding the key-set sequence number (0 = provisioned keys only).
pub const META_KEYS_SEQ: &str = "grants.keys_seq";

/// One key of the trusted set, with its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub kid: String,
    pub public_key: PublicKey,
    /// The key is refused at and after this time (judged at the clock floor).
    pub not_after: Option<OffsetDateTime>,
    /// Set when a key rotation dropped the key; a retired key never comes back.
    pub retired_at: Option<OffsetDateTime>,
    /// `config`, `import` or `keys:<seq>`.
    pub source: String,
}

impl TrustedKey {
    fn usable_at(&self, now: OffsetDateTime) -> Result<PublicKey, KeyError> {
        if self.retired_at.is_some() || self.not_after.is_some_and(|na| now >= na) {
            Err(KeyError::Retired)
        } else {
            Ok(self.public_key)
        }
    }
}

/// The key set as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSet {
    /// Sequence number of the applied `keys` envelope (0 = provisioned keys only).
    pub seq: u64,
    pub keys: BTreeMap<String, TrustedKey>,
    /// SHA-256 of the applied keys payload (for duplicate detection).
    pub payload_sha256: Option<String>,
    /// Kids stored with a weak public key (accepted before weak keys were refused): never used,
    /// and treated as retired, so the kid can never be trusted again.
    pub weak: BTreeSet<String>,
}

/// The keys usable for new envelopes at one instant.
pub struct ActiveKeys<'a> {
    set: &'a TrustSet,
    now: OffsetDateTime,
}

impl KeyProvider for ActiveKeys<'_> {
    fn choose(&self, kid: &str) -> Result<PublicKey, KeyError> {
        match self.set.keys.get(kid) {
            Some(k) => k.usable_at(self.now),
            None if self.set.weak.contains(kid) => Err(KeyError::Retired),
            None => Err(KeyError::Unknown),
        }
    }
}

/// Every key that was ever trusted, retired or not: used only to re-verify an envelope that was
/// already verified and applied while its key was active (the stored bundle on start-up).
pub struct EverTrusted<'a> {
    set: &'a TrustSet,
}

impl KeyProvider for EverTrusted<'_> {
    fn choose(&self, kid: &str) -> Result<PublicKey, KeyError> {
        match self.set.keys.get(kid) {
            Some(k) => Ok(k.public_key),
            None if self.set.weak.contains(kid) => Err(KeyError::Retired),
            None => Err(KeyError::Unknown),
        }
    }
}

impl TrustSet {
    /// Keys usable for verifying new envelopes at `now` (use the effective time, never the raw
    /// clock, so that setting the clock back does not revive an expired key).
    pub fn active_at(&self, now: OffsetDateTime) -> ActiveKeys<'_> {
        ActiveKeys { set: self, now }
    }

    /// Keys for re-verifying stored, already-applied envelopes.
    pub fn ever_trusted(&self) -> EverTrusted<'_> {
        EverTrusted { set: self }
    }

    /// Number of keys usable at `now`.
    pub fn active_count(&self, now: OffsetDateTime) -> usize {
        self.keys
            .values()
            .filter(|k| k.usable_at(now).is_ok())
            .count()
    }

    /// Loads the key set from SQLite.
    pub fn load(conn: &Connection) -> Result<TrustSet, StoreError> {
        let seq = Store::meta_get(conn, META_KEYS_SEQ)?
            .map(|s| s.parse::<u64>())
            .transpose()
            .map_err(|_| StoreError::Corrupt(format!("`{META_KEYS_SEQ}` is not a number")))?
            .unwrap_or(0);
        let payload_sha256 = Store::meta_get(conn, "grants.keys_sha256")?;
        let mut stmt = conn.prepare(
            "SELECT kid, public_key, not_after_ms, retired_ms, source FROM trust_keys ORDER BY kid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut keys = BTreeMap::new();
        let mut weak = BTreeSet::new();
        for row in rows {
            let (kid, pk, not_after, retired, source) = row?;
            // A key stored before weak keys were refused is never used again, and its kid
            // counts as retired (a key set or `trust import` cannot bring it back).
            let public_key = match PublicKey::from_bytes(&pk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(kid = %kid, "stored trust key {e}; it is treated as retired");
                    weak.insert(kid);
                    continue;
                }
            };
            keys.insert(
                kid.clone(),
                TrustedKey {
                    kid,
                    public_key,
                    not_after: not_after.map(from_unix_ms),
                    retired_at: retired.map(from_unix_ms),
                    source,
                },
            );
        }
        Ok(TrustSet {
            seq,
            keys,
            payload_sha256,
            weak,
        })
    }
}

/// Checks a key-set description before signing (the fleet tool): schema, seq, keys.
pub fn check_keys_payload(payload: &[u8]) -> Result<(), Rejection> {
    let wire: KeysWire = parse_json(payload, "keys")?;
    if wire.seq == 0 {
        return reject(Reason::Malformed, "key set `seq` must be at least 1");
    }
    decode_keys(wire.keys).map(|_| ())
}

/// A key to add outside a rotation (config or `trust import`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorKey {
    pub kid: String,
    pub public_key: PublicKey,
    pub not_after: Option<OffsetDateTime>,
}

fn insert_key(
    conn: &Connection,
    k: &AnchorKey,
    source: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO trust_keys(kid, public_key, not_after_ms, retired_ms, source, added_ms)
         VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
        params![
            k.kid,
            k.public_key.as_bytes().to_vec(),
            k.not_after.map(unix_ms),
            source,
            unix_ms(now)
        ],
    )?;
    Ok(())
}

/// Seeds the config's trust anchors while no rotation has happened. Returns warnings for config
/// keys that were ignored (a rotation superseded the config, or the kid is stored with another
/// public key).
pub fn seed_from_config(
    conn: &Connection,
    keys: &[crate::config::TrustKey],
    now: OffsetDateTime,
) -> Result<Vec<String>, StoreError> {
    let set = TrustSet::load(conn)?;
    let mut warnings = Vec::new();
    if set.seq > 0 {
        if !keys.is_empty() {
            warnings.push(format!(
                "`grants.trust` in the config is ignored: key set {} replaced it",
                set.seq
            ));
        }
        return Ok(warnings);
    }
    for k in keys {
        if set.weak.contains(&k.kid) {
            warnings.push(format!(
                "config trust key `{}` is ignored: that kid is stored with a weak key and counts as retired",
                k.kid
            ));
            continue;
        }
        match set.keys.get(&k.kid) {
            Some(existing) if existing.public_key == k.public_key => {}
            Some(_) => warnings.push(format!(
                "config trust key `{}` differs from the stored key with that id; the stored key is kept",
                k.kid
            )),
            None => insert_key(
                conn,
                &AnchorKey {
                    kid: k.kid.clone(),
                    public_key: k.public_key,
                    not_after: None,
                },
                "config",
                now,
            )?,
        }
    }
    Ok(warnings)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyWire {
    kid: String,
    public_key: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    not_after: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysWire {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    keys: Vec<KeyWire>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ImportFile {
    Set { keys: Vec<KeyWire> },
    One(KeyWire),
}

fn decode_keys(list: Vec<KeyWire>) -> Result<Vec<AnchorKey>, Rejection> {
    if list.is_empty() {
        return reject(Reason::Malformed, "the key list is empty");
    }
    if list.len() > MAX_KEYS {
        return reject(Reason::TooLarge, format!("more than {MAX_KEYS} keys"));
    }
    let mut out: Vec<AnchorKey> = Vec::with_capacity(list.len());
    for k in list {
        crate::model::check_id(&k.kid)
            .map_err(|e| Rejection::new(Reason::Malformed, format!("key id: {e}")))?;
        if out.iter().any(|o| o.kid == k.kid) {
            return reject(
                Reason::DuplicateId,
                format!("key `{}` appears twice", k.kid),
            );
        }
        let pk = PublicKey::from_b64(&k.public_key).map_err(|e| {
            Rejection::new(
                e.reason(),
                format!(
                    "key `{}`: the public key {e} (it must be a 32-byte Ed25519 key of prime \
                     order, canonically encoded, in base64url without padding)",
                    k.kid
                ),
            )
        })?;
        out.push(AnchorKey {
            kid: k.kid,
            public_key: pk,
            not_after: k.not_after,
        });
    }
    Ok(out)
}

/// Parses a `trust import` file: `{"keys":[{"kid","public_key","not_after"?}]}` or one key object.
pub fn parse_import_file(bytes: &[u8]) -> Result<Vec<AnchorKey>, Rejection> {
    let f: ImportFile = parse_json(bytes, "trust import")?;
    match f {
        ImportFile::Set { keys } => decode_keys(keys),
        ImportFile::One(k) => decode_keys(vec![k]),
    }
}

/// Adds provisioning keys (`sitegate trust import`). A kid already stored with the same public
/// key is a no-op; a different key under a stored kid, or a retired kid, is refused. Returns the
/// number of keys added.
pub fn import(
    conn: &mut Connection,
    keys: &[AnchorKey],
    now: OffsetDateTime,
) -> Result<usize, GrantError> {
    let tx = conn.transaction().map_err(StoreError::from)?;
    let set = TrustSet::load(&tx)?;
    let mut added = 0;
    for k in keys {
        if set.weak.contains(&k.kid) {
            return Err(GrantError::Trust {
                kid: k.kid.clone(),
                message: "is stored with a weak key, counts as retired and cannot be trusted again"
                    .into(),
            });
        }
        match set.keys.get(&k.kid) {
            Some(e) if e.retired_at.is_some() => {
                return Err(GrantError::Trust {
                    kid: k.kid.clone(),
                    message: "is retired and cannot be trusted again".into(),
                });
            }
            Some(e) if e.public_key == k.public_key => {}
            Some(_) => {
                return Err(GrantError::Trust {
                    kid: k.kid.clone(),
                    message: "is already trusted with a different public key".into(),
                });
            }
            None => {
                insert_key(&tx, k, "import", now)?;
                added += 1;
            }
        }
    }
    tx.commit().map_err(StoreError::from)?;
    Ok(added)
}

/// A new key of a verified key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub kid: String,
    pub public_key: PublicKey,
    pub not_after: Option<OffsetDateTime>,
}

/// A `keys` envelope signed by at least one currently trusted key and by every key it adds. Only
/// [`VerifiedKeys::verify`] makes one; seq and clock checks belong to the engine.
#[derive(Debug, Clone)]
pub struct VerifiedKeys {
    pub seq: u64,
    pub issued_at: OffsetDateTime,
    pub keys: Vec<NewKey>,
    /// Kids whose signatures verified (trusted ones first).
    pub signed_by: Vec<String>,
    payload_sha256: String,
    envelope: Vec<u8>,
}

impl VerifiedKeys {
    /// Verifies a keys envelope against the currently usable keys `current`.
    ///
    /// Order: every signature by a currently trusted key must verify and there must be at least
    /// one; only then is the payload parsed; then every key it adds must have signed too.
    pub fn verify(bytes: &[u8], current: &dyn KeyProvider) -> Result<VerifiedKeys, Rejection> {
        let opened = envelope::open(bytes, Kind::Keys)?;
        let mut trusted_ok: Vec<String> = Vec::new();
        let mut pending = Vec::new();
        let mut first_key_error = None;
        for sig in &opened.sigs {
            match current.choose(&sig.kid) {
                Ok(pk) => {
                    opened.verify_with(sig, &pk, &format!("key `{}`", sig.kid))?;
                    trusted_ok.push(sig.kid.clone());
                }
                Err(KeyError::Retired) => return Err(key_rejection(&sig.kid, KeyError::Retired)),
                Err(e) => {
                    first_key_error.get_or_insert((sig.kid.clone(), e));
                    pending.push(sig);
                }
            }
        }
        if trusted_ok.is_empty() {
            return Err(match first_key_error {
                Some((kid, e)) => key_rejection(&kid, e),
                None => Rejection::new(Reason::UnknownKey, "no signature by a trusted key"),
            });
        }
        // The payload is authenticated by a trusted key from here on.
        let wire: KeysWire = parse_json(&opened.payload, "keys")?;
        if wire.seq == 0 {
            return reject(Reason::Malformed, "key set `seq` must be at least 1");
        }
        let keys = decode_keys(wire.keys)?;
        if !keys
            .iter()
            .any(|k| k.not_after.is_none_or(|na| na > wire.issued_at))
        {
            return reject(
                Reason::Malformed,
                "every key of the new set expires before the set is issued",
            );
        }
        let mut signed_by = trusted_ok;
        let mut new_keys = Vec::with_capacity(keys.len());
        for k in keys {
            match current.choose(&k.kid) {
                Ok(pk) if pk == k.public_key => {}
                Ok(_) => {
                    return reject(
                        Reason::Malformed,
                        format!("key `{}` is trusted with a different public key", k.kid),
                    );
                }
                Err(KeyError::Retired) => {
                    return reject(
                        Reason::RetiredKey,
                        format!("key `{}` is retired and cannot be trusted again", k.kid),
                    );
                }
                Err(KeyError::Unknown) => {
                    let Some(sig) = pending.iter().find(|s| s.kid == k.kid) else {
                        return reject(
                            Reason::MissingSignature,
                            format!("new key `{}` did not sign the key set", k.kid),
                        );
                    };
                    opened.verify_with(sig, &k.public_key, &format!("new key `{}`", k.kid))?;
                    signed_by.push(k.kid.clone());
                }
            }
            new_keys.push(NewKey {
                kid: k.kid,
                public_key: k.public_key,
                not_after: k.not_after,
            });
        }
        if let Some(stray) = pending
            .iter()
            .find(|s| !new_keys.iter().any(|k| k.kid == s.kid))
        {
            return reject(
                Reason::UnknownKey,
                format!(
                    "signature by key `{}`, which is neither trusted nor new",
                    short(&stray.kid)
                ),
            );
        }
        Ok(VerifiedKeys {
            seq: wire.seq,
            issued_at: wire.issued_at,
            keys: new_keys,
            signed_by,
            payload_sha256: crate::util::sha256_hex(&opened.payload),
            envelope: bytes.to_vec(),
        })
    }

    pub fn payload_sha256(&self) -> &str {
        &self.payload_sha256
    }
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
}

/// Writes a verified key set inside the caller's transaction: retires keys absent from it, adds
/// new ones, updates `not_after` of kept ones, and records the seq.
pub(crate) fn store_keys(
    tx: &Connection,
    vk: &VerifiedKeys,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let set = TrustSet::load(tx)?;
    for kid in &set.weak {
        tx.execute(
            "UPDATE trust_keys SET retired_ms = ?2 WHERE kid = ?1 AND retired_ms IS NULL",
            params![kid, unix_ms(now)],
        )?;
    }
    for (kid, k) in &set.keys {
        if k.retired_at.is_none() && !vk.keys.iter().any(|n| &n.kid == kid) {
            tx.execute(
                "UPDATE trust_keys SET retired_ms = ?2 WHERE kid = ?1",
                params![kid, unix_ms(now)],
            )?;
        }
    }
    for k in &vk.keys {
        if set.keys.contains_key(&k.kid) {
            tx.execute(
                "UPDATE trust_keys SET not_after_ms = ?2 WHERE kid = ?1",
                params![k.kid, k.not_after.map(unix_ms)],
            )?;
        } else {
            insert_key(
                tx,
                &AnchorKey {
                    kid: k.kid.clone(),
                    public_key: k.public_key,
                    not_after: k.not_after,
                },
                &format!("keys:{}", vk.seq),
                now,
            )?;
        }
    }
    Store::meta_set(tx, META_KEYS_SEQ, &vk.seq.to_string())?;
    Store::meta_set(tx, "grants.keys_sha256", vk.payload_sha256())?;
    tx.execute(
        "INSERT INTO grant_keysets(seq, payload_sha256, envelope, applied_ms) VALUES (?1, ?2, ?3, ?4)",
        params![
            i64::try_from(vk.seq).unwrap_or(i64::MAX),
            vk.payload_sha256(),
            vk.envelope(),
            unix_ms(now)
        ],
    )?;
    Ok(())
}
