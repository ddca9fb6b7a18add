//! Property: flipping any bits of any single byte of a signed envelope never yields something
//! that verifies (as a bundle, a key set or a token) or that the engine applies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

mod grants_common;

use grants_common::*;
use proptest::prelude::*;
use sitegate::grants::{ApplyOutcome, Kind, VerifiedBundle, VerifiedKeys, VerifiedToken};

fn provider(kid: &str) -> Result<sitegate::grants::PublicKey, sitegate::grants::KeyError> {
    match kid {
        KID_A => Ok(sitegate::grants::fleet::public_key(&key(1)).unwrap()),
        _ => Err(sitegate::grants::KeyError::Unknown),
    }
}

fn flip(env: &[u8], pos: usize, mask: u8) -> Vec<u8> {
    let mut v = env.to_vec();
    let i = pos % v.len();
    v[i] ^= mask;
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_flipped_byte_anywhere_in_a_bundle_envelope_never_verifies(pos in any::<usize>(), mask in 1u8..=255) {
        let env = sign_bundle(&bundle(1));
        prop_assert!(VerifiedBundle::verify(&env, &provider).is_ok());
        let bad = flip(&env, pos, mask);
        prop_assert!(VerifiedBundle::verify(&bad, &provider).is_err());
    }

    #[test]
    fn a_flipped_byte_anywhere_in_a_token_envelope_never_verifies(pos in any::<usize>(), mask in 1u8..=255) {
        let env = sign(Kind::Token, KID_A, &key(1), &token(T0 + time::Duration::days(1)));
        prop_assert!(VerifiedToken::verify(&env, &provider).is_ok());
        let bad = flip(&env, pos, mask);
        prop_assert!(VerifiedToken::verify(&bad, &provider).is_err());
    }

    #[test]
    fn a_flipped_byte_anywhere_in_a_keys_envelope_never_verifies(pos in any::<usize>(), mask in 1u8..=255) {
        let (a, b) = (key(1), key(2));
        let env = sign_keyset(&keyset(1, &[(KID_A, &a), (KID_B, &b)]), &[(KID_A, &a), (KID_B, &b)]);
        prop_assert!(VerifiedKeys::verify(&env, &provider).is_ok());
        let bad = flip(&env, pos, mask);
        prop_assert!(VerifiedKeys::verify(&bad, &provider).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_engine_never_applies_a_flipped_envelope(pos in any::<usize>(), mask in 1u8..=255) {
        let fx = Fx::new();
        fx.apply_seq(1);
        let env = sign_bundle(&bundle(2));
        let bad = flip(&env, pos, mask);
        let before = fx.engine.snapshot();
        match fx.apply(&bad) {
            Ok(ApplyOutcome::Applied { .. }) => prop_assert!(false, "a flipped envelope was applied"),
            Ok(other) => prop_assert!(false, "unexpected outcome {other:?}"),
            Err(_) => prop_assert_eq!(&*fx.engine.snapshot(), &*before),
        }
    }
}
