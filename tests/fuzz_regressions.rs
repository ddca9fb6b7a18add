//! Fuzzing's counterpart in the ordinary test suite (stable toolchain, no sanitizers):
//!
//! - the seeds in fuzz/seeds/ are what they claim to be: valid examples each parser accepts (a
//!   seed that drifts from the format would silently weaken the fuzzing);
//! - every input the fuzzer ever found crashing is kept in fuzz/regressions/TARGET/ and replayed
//!   here through the same calls the fuzz target makes: it must give an error or a value, never a
//!   panic. See docs/STRESS.md for the runs and their findings.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

use std::path::{Path, PathBuf};

use sitegate::api::ports::{AccessRequest, DelegateRequest};
use sitegate::grants::bundle::{VerifiedBundle, VerifiedToken, check_bundle_payload};
use sitegate::grants::trust::check_keys_payload;
use sitegate::grants::{KeyError, Kind, VerifiedKeys, fleet};
use sitegate::modbus::codec;
use sitegate::modbus::profile::Profile;

fn files(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

fn seed(n: u8) -> [u8; 32] {
    std::array::from_fn(|i| n + i as u8)
}

fn example_keys(kid: &str) -> Result<sitegate::grants::PublicKey, KeyError> {
    match kid {
        "fleet-example" => {
            Ok(fleet::public_key(&fleet::keypair_from_seed(&seed(0)).unwrap()).unwrap())
        }
        "fleet-example-2" => {
            Ok(fleet::public_key(&fleet::keypair_from_seed(&seed(0x20)).unwrap()).unwrap())
        }
        _ => Err(KeyError::Unknown),
    }
}

fn shipped_profiles() -> Vec<Profile> {
    ["dse-gencomm", "coolmaster-va"]
        .iter()
        .map(|n| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/profiles")
                .join(format!("{n}.toml"));
            Profile::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect()
}

/// What the `api_bodies` target does with one input; returns whether the body deserialized.
fn api_body(data: &[u8], profiles: &[Profile]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "shape only")]
    struct LoginBody {
        email: Option<String>,
        password: Option<String>,
        token: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WriteBody {
        value: serde_json::Value,
    }
    let Some((&sel, body)) = data.split_first() else {
        return false;
    };
    match sel % 4 {
        0 => serde_json::from_slice::<LoginBody>(body).is_ok(),
        1 => match serde_json::from_slice::<WriteBody>(body) {
            Ok(w) => {
                for p in profiles.iter().flat_map(|p| &p.points) {
                    if p.writable() {
                        let _ = codec::encode(p, &w.value);
                    }
                }
                true
            }
            Err(_) => false,
        },
        2 => serde_json::from_slice::<DelegateRequest>(body).is_ok(),
        _ => serde_json::from_slice::<AccessRequest>(body).is_ok(),
    }
}

#[test]
fn the_envelope_seeds_are_the_worked_examples_and_verify() {
    let seeds = files("fuzz/seeds/envelope");
    assert!(seeds.len() >= 2);
    for (p, b) in seeds {
        let ok = VerifiedBundle::verify(&b, &example_keys).is_ok()
            || VerifiedKeys::verify(&b, &example_keys).is_ok();
        assert!(ok, "{} does not verify", p.display());
    }
}

#[test]
fn the_payload_seeds_are_valid_payloads() {
    for (p, b) in files("fuzz/seeds/bundle_payload") {
        check_bundle_payload(&b).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
    }
    let a = fleet::keypair_from_seed(&seed(0)).unwrap();
    let b2 = fleet::keypair_from_seed(&seed(0x20)).unwrap();
    for (p, b) in files("fuzz/seeds/keys_token") {
        let token = VerifiedToken::verify(
            &fleet::sign(Kind::Token, "fleet-example", &a, &b),
            &example_keys,
        );
        let keys = check_keys_payload(&b).is_ok()
            && VerifiedKeys::verify(
                &fleet::sign_keys(&[("fleet-example", &a), ("fleet-example-2", &b2)], &b),
                &example_keys,
            )
            .is_ok();
        assert!(token.is_ok() || keys, "{} is neither", p.display());
    }
}

#[test]
fn the_profile_config_and_api_body_seeds_parse() {
    for (p, b) in files("fuzz/seeds/profile") {
        Profile::parse(std::str::from_utf8(&b).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
    }
    for (p, b) in files("fuzz/seeds/config") {
        sitegate::config::Config::parse(
            std::str::from_utf8(&b).unwrap(),
            Path::new("/etc/sitegate"),
            &|n| n == "dse-gencomm" || n == "coolmaster-va",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let profiles = shipped_profiles();
    for (p, b) in files("fuzz/seeds/api_bodies") {
        assert!(
            api_body(&b, &profiles),
            "{} does not deserialize",
            p.display()
        );
    }
}

#[test]
fn every_input_the_fuzzer_found_is_refused_without_a_panic() {
    let profiles = shipped_profiles();
    let a = fleet::keypair_from_seed(&seed(0)).unwrap();
    for (_, b) in files("fuzz/regressions/envelope") {
        let _ = VerifiedBundle::verify(&b, &example_keys);
        let _ = VerifiedToken::verify(&b, &example_keys);
        let _ = VerifiedKeys::verify(&b, &example_keys);
    }
    for (_, b) in files("fuzz/regressions/bundle_payload") {
        let checked = check_bundle_payload(&b).is_ok();
        let env = fleet::sign(Kind::Bundle, "fleet-example", &a, &b);
        assert_eq!(checked, VerifiedBundle::verify(&env, &example_keys).is_ok());
    }
    for (_, b) in files("fuzz/regressions/keys_token") {
        let _ = check_keys_payload(&b);
        let _ = sitegate::grants::bundle::check_token_payload(&b);
    }
    for (_, b) in files("fuzz/regressions/profile") {
        if let Ok(t) = std::str::from_utf8(&b) {
            let _ = Profile::parse(t);
        }
    }
    for (_, b) in files("fuzz/regressions/config") {
        if let Ok(t) = std::str::from_utf8(&b) {
            let _ = sitegate::config::Config::parse(t, Path::new("/etc/sitegate"), &|_| true);
        }
    }
    for (_, b) in files("fuzz/regressions/api_bodies") {
        let _ = api_body(&b, &profiles);
    }
}
