//! The signing identity of a test fleet: its key id and an Ed25519 key made from a fixed seed
//! (every run signs the same way), and the password the test users sign in with. Separate test
//! fleets use separate seeds, so one fleet's bundles never verify on another's boxes. Included
//! by `tests/common` and, by path, by `tests/e2e_support`.
#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test helper; not every user needs every item"
)]

use ring::signature::Ed25519KeyPair;

/// The password of every test user (hashed into the bundles with a fixed salt).
pub const PASSWORD: &str = "correct horse battery staple";

/// A test fleet's signing key: its kid and the seed the key is made from.
pub struct TestFleet {
    pub kid: &'static str,
    pub seed: u8,
}

impl TestFleet {
    pub const fn new(kid: &'static str, seed: u8) -> TestFleet {
        TestFleet { kid, seed }
    }

    /// The signing key (the same for every call with this seed).
    pub fn key(&self) -> Ed25519KeyPair {
        sitegate::grants::fleet::keypair_from_seed(&[self.seed; 32]).unwrap()
    }
}
