//! PBKDF2-HMAC-SHA256 password verifiers: `pbkdf2-sha256$<iterations>$<salt>$<hash>` with
//! base64url (no padding) salt and hash.
//!
//! Verification uses `ring::pbkdf2::verify`, which compares in constant time. This module never
//! logs or returns a password or a derived hash.

use std::num::NonZeroU32;

use ring::pbkdf2;

/// Upper bound on iterations accepted from a bundle, so a hostile verifier cannot pin a CPU core
/// for minutes per login attempt.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Iterations for new verifiers and for the dummy verifier (OWASP 2023 for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Longest password accepted (longer input is refused before any hashing).
pub const MAX_PASSWORD_BYTES: usize = 1024;

const PREFIX: &str = "pbkdf2-sha256";

/// Why a stored verifier cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    #[error("password verifier must have the form `pbkdf2-sha256$<iterations>$<salt>$<hash>`")]
    Format,
    #[error("password verifier iterations must be between 1 and {MAX_ITERATIONS}")]
    Iterations,
    #[error("password verifier salt must be base64url of at least 16 bytes")]
    Salt,
    #[error("password verifier hash must be base64url of 32 bytes")]
    Hash,
}

/// A parsed verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn parse(s: &str) -> Result<Verifier, VerifierError> {
        let mut parts = s.split('$');
        let (Some(prefix), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(VerifierError::Format);
        };
        if prefix != PREFIX {
            return Err(VerifierError::Format);
        }
        let iterations = iter
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or(VerifierError::Iterations)?;
        let salt = crate::util_b64::decode(salt).map_err(|_| VerifierError::Salt)?;
        if salt.len() < 16 || salt.len() > 256 {
            return Err(VerifierError::Salt);
        }
        let hash: [u8; 32] = crate::util_b64::decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or(VerifierError::Hash)?;
        Ok(Verifier {
            iterations,
            salt,
            hash,
        })
    }

    /// A verifier that matches no password, with the given cost (for unknown accounts, so that
    /// they cost the same as a wrong password).
    pub fn dummy(iterations: NonZeroU32) -> Verifier {
        Verifier {
            iterations,
            salt: crate::util::random_bytes::<16>().to_vec(),
            hash: crate::util::random_bytes::<32>(),
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

/// Makes a new verifier string for `password` (provisioning tools and tests).
pub fn hash_password(password: &str, iterations: u32) -> String {
    let iterations =
        NonZeroU32::new(iterations.clamp(1, MAX_ITERATIONS)).unwrap_or(NonZeroU32::MIN);
    let salt = crate::util::random_bytes::<16>();
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "{PREFIX}${iterations}${}${}",
        crate::util_b64::encode(salt),
        crate::util_b64::encode(out)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_accepts_its_password_and_nothing_else() {
        let v = Verifier::parse(&hash_password("correct horse", 1000)).unwrap();
        assert!(v.verify(b"correct horse"));
        assert!(!v.verify(b"correct hors"));
        assert!(!v.verify(b""));
        assert!(!Verifier::dummy(v.iterations).verify(b"correct horse"));
    }

    #[test]
    fn malformed_verifiers_are_refused_with_a_reason() {
        let good = hash_password("x", 10);
        let parts: Vec<&str> = good.split('$').collect();
        assert_eq!(Verifier::parse("plain"), Err(VerifierError::Format));
        assert_eq!(
            Verifier::parse(&good.replace("pbkdf2-sha256", "pbkdf2-sha1")),
            Err(VerifierError::Format)
        );
        let with = |i: &str, s: &str, h: &str| format!("pbkdf2-sha256${i}${s}${h}");
        assert_eq!(
            Verifier::parse(&with("0", parts[2], parts[3])),
            Err(VerifierError::Iterations)
        );
        assert_eq!(
            Verifier::parse(&with("10000001", parts[2], parts[3])),
            Err(VerifierError::Iterations)
        );
        assert_eq!(
            Verifier::parse(&with("10", "c2hvcnQ", parts[3])),
            Err(VerifierError::Salt)
        );
        assert_eq!(
            Verifier::parse(&with("10", parts[2], "c2hvcnQ")),
            Err(VerifierError::Hash)
        );
        assert_eq!(
            Verifier::parse(&format!("{good}$extra")),
            Err(VerifierError::Format)
        );
    }
}
