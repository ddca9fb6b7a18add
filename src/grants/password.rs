//! The password verifier format carried in bundles and tokens:
//! `pbkdf2-sha256$<iterations>$<salt b64url>$<hash b64url>` (PBKDF2-HMAC-SHA256, salt 16–64 bytes,
//! hash 32 bytes).
//!
//! This module owns parsing, hashing and constant-time checking of verifiers. It never logs or
//! returns a password, and it bounds the iteration count so that a bundle cannot make a login
//! cost minutes of CPU.

use std::num::NonZeroU32;

use ring::pbkdf2;

/// OWASP's recommendation for PBKDF2-HMAC-SHA256, and what `sitegate fleet hash-password` uses.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Highest iteration count accepted (a bound against a bundle that makes every login a DoS).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Length of a new salt.
pub const SALT_LEN: usize = 16;
/// Longest password accepted at login (longer input is refused before any hashing).
pub const MAX_PASSWORD_BYTES: usize = 1024;
const MIN_SALT: usize = 16;
const MAX_SALT: usize = 64;
const HASH_LEN: usize = 32;
const PREFIX: &str = "pbkdf2-sha256";

/// A parsed verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: NonZeroU32,
    pub salt: Vec<u8>,
    pub hash: [u8; HASH_LEN],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Parses a verifier string (see [`parse_verifier`]).
    pub fn parse(s: &str) -> Result<Verifier, String> {
        parse_verifier(s)
    }

    /// A verifier that matches no password, with the given cost: unknown accounts are checked
    /// against it so that they cost the same as a wrong password.
    pub fn dummy(iterations: NonZeroU32) -> Verifier {
        Verifier {
            iterations,
            salt: crate::util::random_bytes::<SALT_LEN>().to_vec(),
            hash: crate::util::random_bytes::<HASH_LEN>(),
        }
    }

    /// Constant-time check of `password` (blocking: run it on the blocking pool).
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }
}

/// Parses `pbkdf2-sha256$<iterations>$<salt>$<hash>`; the error says what is wrong (never echoes
/// the verifier).
pub fn parse_verifier(s: &str) -> Result<Verifier, String> {
    let mut parts = s.split('$');
    let (Some(alg), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err("password verifier must be `pbkdf2-sha256$<iterations>$<salt>$<hash>`".into());
    };
    if alg != PREFIX {
        return Err("password verifier algorithm must be `pbkdf2-sha256`".into());
    }
    let iterations: u32 = iter
        .parse()
        .map_err(|_| "password verifier iteration count is not a number".to_string())?;
    if iterations > MAX_ITERATIONS {
        return Err(format!(
            "password verifier iteration count must be at most {MAX_ITERATIONS}"
        ));
    }
    let iterations = NonZeroU32::new(iterations)
        .ok_or_else(|| "password verifier iteration count must be at least 1".to_string())?;
    let salt = crate::util_b64::decode(salt)
        .map_err(|_| "password verifier salt is not base64url".to_string())?;
    if !(MIN_SALT..=MAX_SALT).contains(&salt.len()) {
        return Err(format!(
            "password verifier salt must be {MIN_SALT} to {MAX_SALT} bytes"
        ));
    }
    let hash = crate::util_b64::decode(hash)
        .map_err(|_| "password verifier hash is not base64url".to_string())?;
    let hash = <[u8; HASH_LEN]>::try_from(hash.as_slice())
        .map_err(|_| format!("password verifier hash must be {HASH_LEN} bytes"))?;
    Ok(Verifier {
        iterations,
        salt,
        hash,
    })
}

/// Hashes `password` with a fresh random salt into the verifier format.
pub fn hash_password(password: &[u8], iterations: u32) -> Result<String, String> {
    let salt = crate::util::random_bytes::<SALT_LEN>();
    hash_password_with_salt(password, iterations, &salt)
}

/// Hashes `password` with the given salt (deterministic fixtures; real use wants
/// [`hash_password`]).
pub fn hash_password_with_salt(
    password: &[u8],
    iterations: u32,
    salt: &[u8],
) -> Result<String, String> {
    if iterations > MAX_ITERATIONS {
        return Err(format!("iterations must be at most {MAX_ITERATIONS}"));
    }
    let it =
        NonZeroU32::new(iterations).ok_or_else(|| "iterations must be at least 1".to_string())?;
    if !(MIN_SALT..=MAX_SALT).contains(&salt.len()) {
        return Err(format!("salt must be {MIN_SALT} to {MAX_SALT} bytes"));
    }
    let mut hash = [0u8; HASH_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, it, salt, password, &mut hash);
    Ok(format!(
        "{PREFIX}${iterations}${}${}",
        crate::util_b64::encode(salt),
        crate::util_b64::encode(hash)
    ))
}

/// Checks `password` against a verifier in constant time (ring's `pbkdf2::verify`). A malformed
/// verifier never matches.
pub fn verify_password(verifier: &str, password: &[u8]) -> bool {
    parse_verifier(verifier).is_ok_and(|v| v.verify(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let v = hash_password(b"correct horse", 1000).unwrap();
        assert!(v.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify_password(&v, b"correct horse"));
        assert!(!verify_password(&v, b"correct horsE"));
        let p = parse_verifier(&v).unwrap();
        assert_eq!(p.salt.len(), SALT_LEN);
    }

    #[test]
    fn verifiers_outside_the_bounds_are_refused() {
        let salt = crate::util_b64::encode([1u8; 16]);
        let hash = crate::util_b64::encode([2u8; 32]);
        assert!(parse_verifier(&format!("pbkdf2-sha256$1${salt}${hash}")).is_ok());
        assert!(parse_verifier(&format!("pbkdf2-sha256$0${salt}${hash}")).is_err());
        assert!(parse_verifier(&format!("pbkdf2-sha256$10000001${salt}${hash}")).is_err());
        assert!(parse_verifier(&format!("pbkdf2-sha512$1000${salt}${hash}")).is_err());
        let short_salt = crate::util_b64::encode([1u8; 8]);
        assert!(parse_verifier(&format!("pbkdf2-sha256$1000${short_salt}${hash}")).is_err());
        assert!(parse_verifier(&format!("pbkdf2-sha256$1000${salt}${salt}")).is_err());
        assert!(parse_verifier(&format!("pbkdf2-sha256$1000${salt}${hash}$x")).is_err());
        assert!(!verify_password("garbage", b""));
    }
}
