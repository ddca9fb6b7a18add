//! Key-set and installer-token payloads behind a valid signature: the input is the payload, signed
//! with fixed-seed keys, so every byte reaches the payload parser and validator. The fleet tool's
//! checks and the box's verifying constructors must agree; neither may panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ring::signature::Ed25519KeyPair;
use sitegate::grants::bundle::{VerifiedToken, check_token_payload};
use sitegate::grants::trust::check_keys_payload;
use sitegate::grants::{KeyError, Kind, PublicKey, VerifiedKeys, fleet};

struct Keys {
    a: Ed25519KeyPair,
    b: Ed25519KeyPair,
    pa: PublicKey,
    pb: PublicKey,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let a = fleet::keypair_from_seed(&std::array::from_fn(|i| i as u8)).expect("seed");
        let b = fleet::keypair_from_seed(&std::array::from_fn(|i| 0x20 + i as u8)).expect("seed");
        let (pa, pb) = (
            fleet::public_key(&a).expect("key"),
            fleet::public_key(&b).expect("key"),
        );
        Keys { a, b, pa, pb }
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let provider = |kid: &str| match kid {
        "fleet-example" => Ok(k.pa),
        "fleet-example-2" => Ok(k.pb),
        _ => Err(KeyError::Unknown),
    };
    // Token.
    let checked = check_token_payload(data);
    let env = fleet::sign(Kind::Token, "fleet-example", &k.a, data);
    let verified = VerifiedToken::verify(&env, &provider);
    assert_eq!(
        checked.is_ok(),
        verified.is_ok(),
        "token check and verify disagree"
    );
    // Key set, signed by the current key and by the new one.
    let _ = check_keys_payload(data);
    let env = fleet::sign_keys(&[("fleet-example", &k.a), ("fleet-example-2", &k.b)], data);
    let _ = VerifiedKeys::verify(&env, &provider);
});
