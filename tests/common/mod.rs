//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

pub mod daemon;
