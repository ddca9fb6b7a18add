//! sitegate: the daemon on a site controller box.
//!
//! It authenticates local users and authorizes every command by role and scope from access
//! grants that the cloud signed; forwards permitted commands over Modbus to generators and HVAC
//! units while polling their state; and reports state, alarms and an audit trail over MQTT
//! through a store-and-forward outbox. See `docs/architecture.md`.
//!
//! # Layout
//! - [`model`]: identifiers, roles, capabilities, scopes — the shared vocabulary.
//! - [`access`]: the access state (users, grants, revocations, policy) that grants produce and authz reads.
//! - [`config`]: the TOML site config, validated into a type that only exists when valid.
//! - [`clock`]: injected time, so expiry and clock policy are testable.
//! - [`store`]: the SQLite database (WAL, migrations, durability).
//! - [`audit`]: the hash-chained audit trail; every record is also queued for MQTT.
//! - [`outbox`]: the MQTT store-and-forward queue.
//! - [`notify`]: systemd's sd_notify protocol (ready, watchdog, stopping).
//! - [`logging`]: tracing set-up (human, JSON, journald).
//! - [`modbus`]: Modbus links, device profiles, the polling scheduler, validated writes, diagnostics.
//! - [`sim`]: simulated generator and HVAC units (Modbus TCP/RTU servers) for tests and demos.
//! - [`app`]: wiring — builds the components, spawns the tasks, owns shutdown.
//! - [`cli`]: the command-line interface that `main.rs` dispatches.
//! - [`util`], [`util_b64`]: randomness, hashing, private files, base64url.

pub mod access;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod logging;
pub mod modbus;
pub mod model;
pub mod notify;
pub mod outbox;
pub mod sim;
pub mod store;
pub mod util;
pub mod util_b64;
