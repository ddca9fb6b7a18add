//! The fleet tool: what a cloud (or a test, or the demo) uses to make keys and sign envelopes.
//!
//! `sitegate fleet keygen | pubkey | sign-bundle | sign-keys | issue-token | hash-password` are
//! thin wrappers around the functions here. Descriptions are read as JSON, checked with the same
//! validation the box applies, serialized once to compact JSON, and those exact bytes are signed.
//! This module never writes a private key with permissions wider than 0600 and never takes a
//! password from the command line.

use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;

use super::ed25519::PublicKey;
use super::envelope::{Kind, signing_input};
use super::{GrantError, MAX_ENVELOPE_BYTES, Rejection};

#[derive(Serialize)]
struct SingleOut<'a> {
    v: u8,
    kind: &'a str,
    kid: &'a str,
    payload: String,
    sig: String,
}

#[derive(Serialize)]
struct SigOut<'a> {
    kid: &'a str,
    sig: String,
}

#[derive(Serialize)]
struct MultiOut<'a> {
    v: u8,
    kind: &'a str,
    payload: String,
    sigs: Vec<SigOut<'a>>,
}

/// Signs `payload` (exact bytes) as a single-signature envelope of `kind`.
pub fn sign(kind: Kind, kid: &str, key: &Ed25519KeyPair, payload: &[u8]) -> Vec<u8> {
    let sig = key.sign(&signing_input(kind, payload));
    let env = SingleOut {
        v: 1,
        kind: kind.as_str(),
        kid,
        payload: crate::util_b64::encode(payload),
        sig: crate::util_b64::encode(sig.as_ref()),
    };
    serde_json::to_vec(&env).unwrap_or_default()
}

/// Signs a key-set payload with every `(kid, key)` given (a currently trusted key plus each new
/// key, for proof of possession).
pub fn sign_keys(signers: &[(&str, &Ed25519KeyPair)], payload: &[u8]) -> Vec<u8> {
    let input = signing_input(Kind::Keys, payload);
    let env = MultiOut {
        v: 1,
        kind: Kind::Keys.as_str(),
        payload: crate::util_b64::encode(payload),
        sigs: signers
            .iter()
            .map(|(kid, key)| SigOut {
                kid,
                sig: crate::util_b64::encode(key.sign(&input).as_ref()),
            })
            .collect(),
    };
    serde_json::to_vec(&env).unwrap_or_default()
}

/// A key pair from a 32-byte seed: deterministic fixtures for tests, docs and the demo. Real
/// keys come from [`generate_pkcs8`].
pub fn keypair_from_seed(seed: &[u8; 32]) -> Result<Ed25519KeyPair, GrantError> {
    Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|e| GrantError::Invalid(format!("ed25519 seed rejected: {e}")))
}

/// The public key, checked like every key the box trusts (see `ed25519`).
pub fn public_key(key: &Ed25519KeyPair) -> Result<PublicKey, GrantError> {
    PublicKey::of_key_pair(key)
        .map_err(|e| GrantError::Invalid(format!("{}: the public key {e}", e.reason())))
}

/// The public key in base64url (the form config and key sets carry).
pub fn public_key_b64(key: &Ed25519KeyPair) -> String {
    crate::util_b64::encode(key.public_key().as_ref())
}

/// A default key id derived from the public key: `fleet-<8 hex>`.
pub fn default_kid(key: &Ed25519KeyPair) -> String {
    let h = crate::util::sha256_hex(key.public_key().as_ref());
    format!("fleet-{}", h.get(..8).unwrap_or("00000000"))
}

/// A new PKCS#8 v2 Ed25519 key document (what ring needs to load it again).
pub fn generate_pkcs8() -> Result<Vec<u8>, GrantError> {
    Ed25519KeyPair::generate_pkcs8(crate::util::rng())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| GrantError::Invalid("could not generate a key".into()))
}

/// Loads a PKCS#8 v2 Ed25519 private key file.
pub fn load_pkcs8(path: &Path) -> Result<Ed25519KeyPair, GrantError> {
    let bytes = std::fs::read(path).map_err(|e| GrantError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| {
        GrantError::Invalid(format!(
            "`{}` is not a PKCS#8 v2 Ed25519 key: {e}",
            path.display()
        ))
    })
}

/// PBKDF2-HMAC-SHA256 verifier with a fresh 16-byte salt
/// (`pbkdf2-sha256$<iter>$<salt>$<hash>`).
pub fn hash_password(password: &str, iterations: u32) -> Result<String, GrantError> {
    super::password::hash_password(password.as_bytes(), iterations).map_err(GrantError::Invalid)
}

/// Parses a JSON description and re-serializes it compactly: the exact bytes that get signed. A
/// key repeated in any object is refused (as the box would), not silently resolved.
pub fn compact_json(input: &[u8]) -> Result<Vec<u8>, GrantError> {
    if input.len() > MAX_ENVELOPE_BYTES {
        return Err(GrantError::Invalid("description is too large".into()));
    }
    let v: serde_json::Value = super::strict_json::check(input)
        .and_then(|()| serde_json::from_slice(input))
        .map_err(|e| GrantError::Invalid(format!("description is not valid JSON: {e}")))?;
    serde_json::to_vec(&v).map_err(|e| GrantError::Invalid(format!("cannot serialize: {e}")))
}

fn checked(r: Result<(), Rejection>) -> Result<(), GrantError> {
    r.map_err(|e| GrantError::Invalid(format!("description would be rejected: {e}")))
}

/// Signs a bundle description (checked first, so an integrator sees what the box would reject).
pub fn sign_bundle_description(
    key: &Ed25519KeyPair,
    kid: &str,
    description: &[u8],
) -> Result<Vec<u8>, GrantError> {
    let payload = compact_json(description)?;
    checked(super::bundle::check_bundle_payload(&payload).map(|_| ()))?;
    Ok(sign(Kind::Bundle, kid, key, &payload))
}

/// Signs an installer-token description.
pub fn sign_token_description(
    key: &Ed25519KeyPair,
    kid: &str,
    description: &[u8],
) -> Result<Vec<u8>, GrantError> {
    let payload = compact_json(description)?;
    checked(super::bundle::check_token_payload(&payload))?;
    Ok(sign(Kind::Token, kid, key, &payload))
}

/// Signs a key-set description with every signer.
pub fn sign_keys_description(
    signers: &[(&str, &Ed25519KeyPair)],
    description: &[u8],
) -> Result<Vec<u8>, GrantError> {
    let payload = compact_json(description)?;
    // Every new key must be among the signers: the box checks that (it knows which are new).
    checked(super::trust::check_keys_payload(&payload))?;
    if signers.is_empty() {
        return Err(GrantError::Invalid(
            "at least one signing key is needed".into(),
        ));
    }
    Ok(sign_keys(signers, &payload))
}

/// A bundle envelope cut for a broker's message limit: the signed manifest and the part
/// messages (see `parts` and docs/grants.md, "Bundles in parts").
#[derive(Debug, Clone)]
pub struct SplitBundle {
    pub site: String,
    pub seq: u64,
    /// The manifest envelope (`kind: "manifest"`), published retained on `…/grants`.
    pub manifest: Vec<u8>,
    /// Part `i` is published retained on `…/grants/parts/{i}`.
    pub parts: Vec<Vec<u8>>,
}

/// Cuts a signed bundle envelope into parts of at most `max_message` bytes and signs their
/// manifest with `key`. The bundle is checked as the box would parse it (its signature is the
/// box's business: the box verifies the reassembled envelope as any other).
pub fn split_bundle(
    key: &Ed25519KeyPair,
    kid: &str,
    envelope: &[u8],
    max_message: usize,
) -> Result<SplitBundle, GrantError> {
    let opened = super::envelope::open(envelope, Kind::Bundle)
        .map_err(|e| GrantError::Invalid(format!("not a bundle envelope: {e}")))?;
    let bundle = super::bundle::check_bundle_payload(&opened.payload)
        .map_err(|e| GrantError::Invalid(format!("bundle would be rejected: {e}")))?;
    let site = bundle.site.to_string();
    let payload_sha = crate::util::sha256_hex(&opened.payload);
    let split = super::parts::split(envelope, &site, bundle.seq, &payload_sha, max_message)
        .map_err(GrantError::Invalid)?;
    let manifest = sign(Kind::Manifest, kid, key, &split.manifest_payload);
    if manifest.len() > max_message {
        return Err(GrantError::Invalid(format!(
            "the manifest is {} bytes, above the maximum message size {max_message}",
            manifest.len()
        )));
    }
    Ok(SplitBundle {
        site,
        seq: bundle.seq,
        manifest,
        parts: split.parts,
    })
}

/// The number of parts a retained message on `…/grants` announces, when it is a manifest (read
/// without verifying: only used to clear the retained parts a smaller set leaves behind).
pub fn announced_parts(retained: &[u8]) -> usize {
    super::envelope::open(retained, Kind::Manifest)
        .ok()
        .and_then(|o| serde_json::from_slice::<super::parts::Manifest>(&o.payload).ok())
        .map_or(0, |m| m.parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::envelope::KeyError;
    use crate::grants::{Reason, VerifiedBundle};

    #[test]
    fn a_signed_description_verifies_and_a_tampered_one_does_not() {
        let key = keypair_from_seed(&[7u8; 32]).unwrap();
        let pk = public_key(&key).unwrap();
        let provider = move |kid: &str| {
            if kid == "k1" {
                Ok(pk)
            } else {
                Err(KeyError::Unknown)
            }
        };
        let desc = br#"{ "site": "s-1", "seq": 1, "issued_at": "2026-11-23T20:00:00Z",
                         "policy": {"management": "pro", "features": ["view"]} }"#;
        let env = sign_bundle_description(&key, "k1", desc).unwrap();
        let vb = VerifiedBundle::verify(&env, &provider).unwrap();
        assert_eq!(vb.bundle().seq, 1);
        let other = sign_bundle_description(&key, "k2", desc).unwrap();
        assert_eq!(
            VerifiedBundle::verify(&other, &provider)
                .unwrap_err()
                .reason,
            Reason::UnknownKey
        );
        assert!(sign_bundle_description(&key, "k1", b"{\"site\":\"s-1\"}").is_err());
        let twice = br#"{ "site": "s-1", "seq": 1, "issued_at": "2026-11-23T20:00:00Z",
                          "policy": {"management": "pro", "features": ["view"],
                                     "max_offline": {"admin": "1d", "admin": "3650d"}} }"#;
        let e = sign_bundle_description(&key, "k1", twice).unwrap_err();
        assert!(e.to_string().contains("duplicate key `admin`"), "{e}");
    }

    #[test]
    fn generated_pkcs8_keys_load_again() {
        let doc = generate_pkcs8().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pk8");
        crate::util::write_private(&p, &doc).unwrap();
        let k = load_pkcs8(&p).unwrap();
        assert!(default_kid(&k).starts_with("fleet-"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
