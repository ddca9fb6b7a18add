//! The signed envelope: `{"v":1,"kind":…,"kid":…,"payload":<b64url>,"sig":<b64url>}` (keys
//! envelopes carry `"sigs":[{"kid","sig"},…]` instead of `kid`/`sig`).
//!
//! This module parses only the small outer wrapper, after a size check, and verifies Ed25519
//! signatures over `"sitegate/v1/" + kind + "\n" + payload_bytes`. It never parses a payload:
//! that is the job of the verifying constructors in `bundle` and `trust`, which call it first.

use serde::Deserialize;

use super::ed25519::{PublicKey, SignatureProblem};
use super::{MAX_ENVELOPE_BYTES, MAX_KEYS, Reason, Rejection, reject, short};

/// What an envelope carries. Part of the signed bytes (domain separation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A full snapshot of the site's access state.
    Bundle,
    /// A new trusted key set.
    Keys,
    /// An installer token: one user and one grant.
    Token,
    /// The signed manifest of a bundle sent in parts (see `parts`).
    Manifest,
    /// One part of a bundle sent in parts. Not an envelope and never signed: it is trusted only
    /// through the hash its verified manifest lists.
    Part,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bundle => "bundle",
            Kind::Keys => "keys",
            Kind::Token => "token",
            Kind::Manifest => "manifest",
            Kind::Part => "part",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "bundle" => Some(Kind::Bundle),
            "keys" => Some(Kind::Keys),
            "token" => Some(Kind::Token),
            "manifest" => Some(Kind::Manifest),
            "part" => Some(Kind::Part),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exact bytes a signature covers: `sitegate/v1/<kind>\n<payload bytes>`.
pub fn signing_input(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let prefix = format!("sitegate/v1/{}\n", kind.as_str());
    let mut v = Vec::with_capacity(prefix.len() + payload.len());
    v.extend_from_slice(prefix.as_bytes());
    v.extend_from_slice(payload);
    v
}

/// Why a key id could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not in the trusted key set.
    Unknown,
    /// Retired by a rotation or past `not_after`.
    Retired,
}

/// Looks up the public key for a `kid` (biscuit's `RootKeyProvider::choose`). Implementations
/// decide what "usable" means (active keys now, or keys that were trusted when a stored bundle
/// was applied).
pub trait KeyProvider {
    fn choose(&self, kid: &str) -> Result<PublicKey, KeyError>;
}

impl<F> KeyProvider for F
where
    F: Fn(&str) -> Result<PublicKey, KeyError>,
{
    fn choose(&self, kid: &str) -> Result<PublicKey, KeyError> {
        self(kid)
    }
}

/// Maps a key lookup failure to its rejection.
pub(crate) fn key_rejection(kid: &str, e: KeyError) -> Rejection {
    match e {
        KeyError::Unknown => Rejection::new(
            Reason::UnknownKey,
            format!("key `{}` is not trusted", short(kid)),
        ),
        KeyError::Retired => Rejection::new(
            Reason::RetiredKey,
            format!("key `{}` is retired or expired", short(kid)),
        ),
    }
}

/// Only the version, read first so that a future envelope version is reported as such.
#[derive(Deserialize)]
struct VersionOnly {
    v: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[expect(dead_code, reason = "checked by the version-only pass")]
    v: u64,
    kind: String,
    #[serde(default)]
    kid: Option<String>,
    payload: String,
    #[serde(default)]
    sig: Option<String>,
    #[serde(default)]
    sigs: Option<Vec<WireSig>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSig {
    kid: String,
    sig: String,
}

/// One signature of an opened envelope, not yet verified.
#[derive(Debug, Clone)]
pub(crate) struct Signature {
    pub kid: String,
    pub sig: [u8; 64],
}

/// An envelope whose wrapper parsed; its signatures are NOT verified yet.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub sigs: Vec<Signature>,
}

impl Opened {
    /// Verifies signature `sig` with `public_key`; `who` names the key in the rejection (e.g.
    /// "key `k1`"). A non-canonical signature is `non_canonical_signature`, one that does not
    /// verify is `bad_signature`.
    pub fn verify_with(
        &self,
        sig: &Signature,
        public_key: &PublicKey,
        who: &str,
    ) -> Result<(), Rejection> {
        match public_key.verify(&signing_input(self.kind, &self.payload), &sig.sig) {
            Ok(()) => Ok(()),
            Err(SignatureProblem::NonCanonical) => reject(
                Reason::NonCanonicalSignature,
                format!("signature by {who} is not canonical (S >= L or a small-order R)"),
            ),
            Err(SignatureProblem::Invalid) => reject(
                Reason::BadSignature,
                format!("signature by {who} does not verify"),
            ),
        }
    }
}

fn decode_sig(s: &str) -> Result<[u8; 64], Rejection> {
    let bytes = crate::util_b64::decode(s).map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            "signature is not base64url without padding",
        )
    })?;
    <[u8; 64]>::try_from(bytes.as_slice())
        .map_err(|_| Rejection::new(Reason::Malformed, "signature is not 64 bytes"))
}

#[derive(Deserialize)]
struct KindOnly {
    kind: String,
}

/// Reads only the `kind` of an envelope (after the size check), to dispatch it. Nothing is
/// trusted from this: [`open`] checks the kind again.
pub(crate) fn peek_kind(bytes: &[u8]) -> Result<Kind, Rejection> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return reject(
            Reason::TooLarge,
            format!(
                "envelope is {} bytes, more than the {} allowed",
                bytes.len(),
                MAX_ENVELOPE_BYTES
            ),
        );
    }
    let k: KindOnly = super::strict_json::check(bytes)
        .and_then(|()| serde_json::from_slice(bytes))
        .map_err(|e| Rejection::new(Reason::Malformed, format!("envelope is not valid: {e}")))?;
    Kind::parse(&k.kind).ok_or_else(|| {
        Rejection::new(
            Reason::WrongKind,
            format!("unknown envelope kind `{}`", short(&k.kind)),
        )
    })
}

/// Parses the outer wrapper of `bytes`, expecting `expected`. Checks size, version, kind and the
/// signature fields; decodes the payload. Never looks inside the payload.
pub(crate) fn open(bytes: &[u8], expected: Kind) -> Result<Opened, Rejection> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return reject(
            Reason::TooLarge,
            format!(
                "envelope is {} bytes, more than the {} allowed",
                bytes.len(),
                MAX_ENVELOPE_BYTES
            ),
        );
    }
    super::strict_json::check(bytes)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("envelope is not valid: {e}")))?;
    let version: VersionOnly = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("envelope is not valid: {e}")))?;
    if version.v != serde_json::json!(1) {
        return reject(
            Reason::UnsupportedVersion,
            format!(
                "envelope version {} is not supported (expected 1)",
                short(&version.v.to_string())
            ),
        );
    }
    let wire: Wire = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("envelope is not valid: {e}")))?;
    let Some(kind) = Kind::parse(&wire.kind) else {
        return reject(
            Reason::WrongKind,
            format!("unknown envelope kind `{}`", short(&wire.kind)),
        );
    };
    if kind != expected {
        return reject(
            Reason::WrongKind,
            format!("expected a `{expected}` envelope, got `{kind}`"),
        );
    }
    let sigs = match (kind, wire.kid, wire.sig, wire.sigs) {
        (Kind::Keys, None, None, Some(list)) => {
            if list.is_empty() {
                return reject(Reason::Malformed, "`sigs` is empty");
            }
            if list.len() > MAX_KEYS {
                return reject(Reason::TooLarge, format!("more than {MAX_KEYS} signatures"));
            }
            let mut out: Vec<Signature> = Vec::with_capacity(list.len());
            for s in list {
                crate::model::check_id(&s.kid).map_err(|e| {
                    Rejection::new(Reason::Malformed, format!("signature key id: {e}"))
                })?;
                if out.iter().any(|o| o.kid == s.kid) {
                    return reject(
                        Reason::DuplicateId,
                        format!("two signatures by key `{}`", s.kid),
                    );
                }
                out.push(Signature {
                    sig: decode_sig(&s.sig)?,
                    kid: s.kid,
                });
            }
            out
        }
        (Kind::Keys, ..) => {
            return reject(
                Reason::Malformed,
                "a `keys` envelope carries `sigs` and no `kid` or `sig`",
            );
        }
        (_, Some(kid), Some(sig), None) => {
            crate::model::check_id(&kid)
                .map_err(|e| Rejection::new(Reason::Malformed, format!("key id: {e}")))?;
            vec![Signature {
                sig: decode_sig(&sig)?,
                kid,
            }]
        }
        _ => {
            return reject(
                Reason::Malformed,
                format!("a `{kind}` envelope carries `kid` and `sig` and no `sigs`"),
            );
        }
    };
    let payload = crate::util_b64::decode(&wire.payload).map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            "payload is not base64url without padding",
        )
    })?;
    Ok(Opened {
        kind,
        payload,
        sigs,
    })
}

/// SHA-256 (hex) of the payload of a well-formed envelope of `kind`, without verifying it. Used
/// only to recognise a redelivery of the payload already in force (which changes nothing), so
/// that a retained message signed by a since-retired key is not reported as an attack.
pub(crate) fn payload_sha256(bytes: &[u8], kind: Kind) -> Option<String> {
    open(bytes, kind)
        .ok()
        .map(|o| crate::util::sha256_hex(&o.payload))
}

/// Opens a single-signature envelope and verifies it with the key `keys` chooses. Returns the
/// kid and the verified payload bytes.
pub(crate) fn open_and_verify_single(
    bytes: &[u8],
    expected: Kind,
    keys: &dyn KeyProvider,
) -> Result<(String, Vec<u8>), Rejection> {
    let opened = open(bytes, expected)?;
    let [sig] = opened.sigs.as_slice() else {
        return reject(Reason::Malformed, "expected exactly one signature");
    };
    let public_key = keys
        .choose(&sig.kid)
        .map_err(|e| key_rejection(&sig.kid, e))?;
    opened.verify_with(sig, &public_key, &format!("key `{}`", sig.kid))?;
    let kid = sig.kid.clone();
    Ok((kid, opened.payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_input_separates_kinds() {
        assert_eq!(
            signing_input(Kind::Bundle, b"{}"),
            b"sitegate/v1/bundle\n{}".to_vec()
        );
        assert_ne!(
            signing_input(Kind::Keys, b"{}"),
            signing_input(Kind::Token, b"{}")
        );
    }

    #[test]
    fn wrapper_errors_have_their_reasons() {
        let r = |b: &str, k| open(b.as_bytes(), k).unwrap_err().reason;
        assert_eq!(r("not json", Kind::Bundle), Reason::Malformed);
        assert_eq!(
            r(
                r#"{"v":2,"kind":"bundle","kid":"k","payload":"","sig":""}"#,
                Kind::Bundle
            ),
            Reason::UnsupportedVersion
        );
        assert_eq!(
            r(
                r#"{"v":1,"kind":"toast","kid":"k","payload":"","sig":""}"#,
                Kind::Bundle
            ),
            Reason::WrongKind
        );
        assert_eq!(
            r(
                r#"{"v":1,"kind":"bundle","kid":"k","payload":"","sig":"","x":1}"#,
                Kind::Bundle
            ),
            Reason::Malformed
        );
        assert_eq!(
            r(
                r#"{"v":1,"kind":"keys","kid":"k","payload":"","sig":"AA"}"#,
                Kind::Keys
            ),
            Reason::Malformed
        );
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            open(&big, Kind::Bundle).unwrap_err().reason,
            Reason::TooLarge
        );
    }
}
