//! The LAN API's JSON request bodies, deserialized the way the handlers do (serde_json into the
//! request types, `deny_unknown_fields`), then a point write value validated and encoded against
//! every writable point of the shipped profiles (`modbus::codec::encode`, what a `PUT …/points/…`
//! runs before touching the bus). Any body gives a value or a clear error, never a panic.
//!
//! The first byte picks the body type; the rest is the body.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use sitegate::api::ports::{AccessRequest, DelegateRequest};
use sitegate::modbus::codec;
use sitegate::modbus::profile::Profile;

/// Same shape as `api::handlers::LoginBody` (private to the API module).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "shape only: the fields are deserialized, never read"
)]
struct LoginBody {
    email: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// Same shape as `api::handlers::WriteBody`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteBody {
    value: serde_json::Value,
}

fn profiles() -> &'static [Profile] {
    static P: OnceLock<Vec<Profile>> = OnceLock::new();
    P.get_or_init(|| {
        [
            include_str!("../../config/profiles/dse-gencomm.toml"),
            include_str!("../../config/profiles/coolmaster-va.toml"),
        ]
        .iter()
        .map(|t| Profile::parse(t).expect("shipped profile"))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let _ = serde_json::from_slice::<LoginBody>(body);
        }
        1 => {
            if let Ok(w) = serde_json::from_slice::<WriteBody>(body) {
                for p in profiles().iter().flat_map(|p| &p.points) {
                    if p.writable() {
                        let _ = codec::encode(p, &w.value);
                    }
                }
            }
        }
        2 => {
            let _ = serde_json::from_slice::<DelegateRequest>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<AccessRequest>(body);
        }
    }
});
