//! The envelope wrapper and the three verifying constructors on unverified bytes: any input is
//! refused with a reason (or, for a correctly signed one, accepted), never a panic. The fixed
//! trusted key is the worked example's key of docs/grants.md, so its seed envelopes verify and the
//! fuzzer mutates from a valid starting point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sitegate::grants::bundle::{VerifiedBundle, VerifiedToken};
use sitegate::grants::{KeyError, VerifiedKeys, fleet};

fn example_key(kid: &str) -> Result<[u8; 32], KeyError> {
    static KEYS: std::sync::OnceLock<[[u8; 32]; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let a: [u8; 32] = std::array::from_fn(|i| i as u8);
        let b: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
        let pk = |s: &[u8; 32]| fleet::public_key(&fleet::keypair_from_seed(s).expect("seed"));
        [pk(&a), pk(&b)]
    });
    match kid {
        "fleet-example" => Ok(keys[0]),
        "fleet-example-2" => Ok(keys[1]),
        "retired" => Err(KeyError::Retired),
        _ => Err(KeyError::Unknown),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = VerifiedBundle::verify(data, &example_key);
    let _ = VerifiedToken::verify(data, &example_key);
    let _ = VerifiedKeys::verify(data, &example_key);
});
