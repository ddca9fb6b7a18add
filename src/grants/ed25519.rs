//! Ed25519 public keys and signature checks, strict (as TUF and `verify_strict` do).
//!
//! ring verifies signatures but accepts any 32 bytes as a public key, including the small-order
//! points: with the identity point as public key, `R` = a small-order point and `S` = 0 verifies
//! for EVERY message, so whoever gets such a key trusted can sign anything under its kid. This
//! module is the one place where a public key is admitted: [`PublicKey`] has no constructor that
//! skips the point checks, and every path that brings a key into the box (key sets, `trust
//! import`, `provision --trust`, config anchors, the stored trust set, the device key, the fleet
//! tool) goes through it. [`PublicKey::verify`] also refuses non-canonical signatures before
//! handing them to ring.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ring::signature::{ED25519, UnparsedPublicKey};

/// Why bytes are not an acceptable Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// Not base64url without padding.
    #[error("is not base64url without padding")]
    Encoding,
    /// Not exactly 32 bytes.
    #[error("is not 32 bytes")]
    Length,
    /// The y coordinate has no x on the curve.
    #[error("is not a point on the curve")]
    NotOnCurve,
    /// A point encoded other than the one canonical way (y >= p, or the sign bit set with x = 0).
    #[error("is not canonically encoded")]
    NonCanonical,
    /// One of the 8 points of order 1, 2, 4 or 8 (the identity among them).
    #[error("is a small-order point")]
    SmallOrder,
    /// A point with a small-order component (not in the prime-order subgroup); no key made from a
    /// seed is one.
    #[error("has a small-order component")]
    MixedOrder,
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    /// `S` >= L, or `R` not a canonical encoding of a point of large order: a valid signature
    /// never looks like this (signatures are not malleable here).
    #[error("is not canonical")]
    NonCanonical,
    /// The signature does not verify.
    #[error("does not verify")]
    Invalid,
}

/// An Ed25519 public key that is on the curve, canonically encoded and of prime order. The only
/// constructors check all three.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", crate::util_b64::encode(self.0))
    }
}

/// Decodes a canonically encoded point, or says why it is not one.
fn decode_point(bytes: &[u8; 32]) -> Result<EdwardsPoint, KeyProblem> {
    let point = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(KeyProblem::NotOnCurve)?;
    // decompress() reduces y mod p and ignores the sign bit when x = 0; re-encoding gives the
    // canonical bytes, which must be the ones given.
    if point.compress().as_bytes() != bytes {
        return Err(KeyProblem::NonCanonical);
    }
    Ok(point)
}

impl PublicKey {
    /// Checks raw bytes: 32 bytes, a point on the curve, canonical, not small-order, no
    /// small-order component.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyProblem> {
        let bytes = <[u8; 32]>::try_from(bytes).map_err(|_| KeyProblem::Length)?;
        let point = decode_point(&bytes)?;
        if point.is_small_order() {
            return Err(KeyProblem::SmallOrder);
        }
        if !point.is_torsion_free() {
            return Err(KeyProblem::MixedOrder);
        }
        Ok(PublicKey(bytes))
    }

    /// Decodes base64url without padding, then checks as [`PublicKey::from_bytes`].
    pub fn from_b64(s: &str) -> Result<PublicKey, KeyProblem> {
        let bytes = crate::util_b64::decode(s).map_err(|_| KeyProblem::Encoding)?;
        PublicKey::from_bytes(&bytes)
    }

    /// The public key of a ring key pair (checked like any other key).
    pub fn of_key_pair(pair: &ring::signature::Ed25519KeyPair) -> Result<PublicKey, KeyProblem> {
        use ring::signature::KeyPair;
        PublicKey::from_bytes(pair.public_key().as_ref())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// base64url without padding (the wire and config form).
    pub fn to_b64(&self) -> String {
        crate::util_b64::encode(self.0)
    }

    /// Verifies `sig` over `message`: refuses a non-canonical signature first (`S` >= L, or `R`
    /// not a canonical point of large order), then lets ring verify.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), SignatureProblem> {
        let sig = <&[u8; 64]>::try_from(sig).map_err(|_| SignatureProblem::Invalid)?;
        check_signature_encoding(sig)?;
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, sig)
            .map_err(|_| SignatureProblem::Invalid)
    }
}

/// The encoding checks of a signature `R || S`.
fn check_signature_encoding(sig: &[u8; 64]) -> Result<(), SignatureProblem> {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&sig[..32]);
    s.copy_from_slice(&sig[32..]);
    if bool::from(Scalar::from_canonical_bytes(s).is_none()) {
        return Err(SignatureProblem::NonCanonical);
    }
    match decode_point(&r) {
        Ok(p) if !p.is_small_order() => Ok(()),
        _ => Err(SignatureProblem::NonCanonical),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    /// p = 2^255 - 19, little-endian.
    const P: [u8; 32] = {
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    };

    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> ([u8; 32], bool) {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
        (out, carry != 0)
    }

    #[test]
    fn all_eight_small_order_points_are_refused_in_every_encoding() {
        let mut non_canonical = 0;
        for t in EIGHT_TORSION {
            let c = t.compress().to_bytes();
            assert_eq!(PublicKey::from_bytes(&c), Err(KeyProblem::SmallOrder));
            // y + p, when it still fits in 255 bits (y < 19).
            let mut y = c;
            y[31] &= 0x7f;
            let sign = c[31] & 0x80;
            let (mut big, overflow) = add_le(&y, &P);
            if !overflow && big[31] & 0x80 == 0 {
                big[31] |= sign;
                assert_eq!(PublicKey::from_bytes(&big), Err(KeyProblem::NonCanonical));
                non_canonical += 1;
            }
            // x = 0: the sign bit set is a second encoding.
            if t.compress().to_bytes() == (-t).compress().to_bytes() {
                let mut s = c;
                s[31] |= 0x80;
                assert_eq!(PublicKey::from_bytes(&s), Err(KeyProblem::NonCanonical));
                non_canonical += 1;
            }
        }
        // y = 0 (twice) and y = 1 have y + p < 2^255; y = 1 and y = -1 have x = 0.
        assert_eq!(non_canonical, 5);
    }

    #[test]
    fn zero_off_curve_and_mixed_order_keys_are_refused_and_real_keys_pass() {
        assert_eq!(
            PublicKey::from_bytes(&[0u8; 32]),
            Err(KeyProblem::SmallOrder)
        );
        assert_eq!(PublicKey::from_bytes(&[1u8; 31]), Err(KeyProblem::Length));
        // y = 2 has no x on the curve.
        let mut off = [0u8; 32];
        off[0] = 2;
        assert_eq!(PublicKey::from_bytes(&off), Err(KeyProblem::NotOnCurve));
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let good = PublicKey::of_key_pair(&pair).unwrap();
        let mixed = CompressedEdwardsY(*good.as_bytes()).decompress().unwrap() + EIGHT_TORSION[1];
        assert_eq!(
            PublicKey::from_bytes(mixed.compress().as_bytes()),
            Err(KeyProblem::MixedOrder)
        );
        assert_eq!(PublicKey::from_b64("!"), Err(KeyProblem::Encoding));
    }

    #[test]
    fn the_identity_key_forgery_that_ring_accepts_is_refused() {
        // R = identity, S = 0 "verifies" under the identity key for any message in ring.
        let identity = EIGHT_TORSION[0].compress().to_bytes();
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&identity);
        assert!(
            UnparsedPublicKey::new(&ED25519, &identity)
                .verify(b"anything at all", &sig)
                .is_ok()
        );
        assert_eq!(
            PublicKey::from_bytes(&identity),
            Err(KeyProblem::SmallOrder)
        );
        // And a small-order R is refused whatever the key.
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[5u8; 32]).unwrap();
        let pk = PublicKey::of_key_pair(&pair).unwrap();
        assert_eq!(pk.verify(b"x", &sig), Err(SignatureProblem::NonCanonical));
    }

    #[test]
    fn a_signature_with_s_plus_l_is_non_canonical_and_the_original_verifies() {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap();
        let pk = PublicKey::of_key_pair(&pair).unwrap();
        let sig: [u8; 64] = pair.sign(b"msg").as_ref().try_into().unwrap();
        assert_eq!(pk.verify(b"msg", &sig), Ok(()));
        assert_eq!(pk.verify(b"other", &sig), Err(SignatureProblem::Invalid));
        // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let mut l = [0u8; 32];
        l[..16].copy_from_slice(&[
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14,
        ]);
        l[31] = 0x10;
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..]);
        let (s_plus_l, overflow) = add_le(&s, &l);
        assert!(!overflow);
        let mut bad = sig;
        bad[32..].copy_from_slice(&s_plus_l);
        assert_eq!(pk.verify(b"msg", &bad), Err(SignatureProblem::NonCanonical));
    }
}
