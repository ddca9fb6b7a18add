//! Helpers shared by the integration tests. MQTT: a real mosquitto per test (`broker`),
//! certificates made with rcgen (`pki`), and a recording subscriber plus configs (`mqtt`).
#![allow(
    dead_code,
    reason = "shared by several test binaries; each uses a subset"
)]

pub mod broker;
pub mod mqtt;
pub mod pki;
