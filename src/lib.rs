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
//! - [`authz`]: the authorization decision over an immutable, swapped-whole index.
//! - [`auth`]: local login (password, installer token), sessions, throttling.
//! - [`delegation`]: local grants delegated on this box, signed by the device key; access requests.
//! - [`config`]: the TOML site config, validated into a type that only exists when valid.
//! - [`grants`]: signed grant bundles, trust keys and rotation, installer tokens, the fleet tool.
//! - [`clock`]: injected time, so expiry and clock policy are testable.
//! - [`store`]: the SQLite database (WAL, migrations, durability).
//! - [`audit`]: the hash-chained audit trail; every record is also queued for MQTT.
//! - [`outbox`]: the MQTT store-and-forward queue.
//! - [`mqtt`]: the northbound MQTT link (TLS, reconnect, grants in, status/telemetry/events out, outbox drain).
//! - [`notify`]: systemd's sd_notify protocol (ready, watchdog, stopping).
//! - [`logging`]: tracing set-up (human, JSON, journald).
//! - [`provision`]: from a blank box to a configured one (the work behind `sitegate provision`
//!   and the first-boot setup endpoint).
//! - [`api`]: the LAN API (HTTP/JSON under `/api/v1`): routes, error contract, hardening, serving;
//!   and the local console socket for the installer tools on the box (`api::console`).
//! - [`tls`]: the API's certificate (self-signed at provisioning, or configured) and its fingerprint.
//! - [`metrics`]: the Prometheus registry behind `GET /api/v1/metrics`.
//! - [`setup`]: the first-boot setup endpoint of an unprovisioned box.
//! - [`modbus`]: Modbus links, device profiles, the polling scheduler, validated writes, diagnostics.
//! - `sim` (cargo feature `sim`, on by default): simulated generator and HVAC units (Modbus
//!   TCP/RTU servers) for tests and the demo; a box build leaves it out.
//! - [`config_load`]: reads the config file with the device profiles it may use (typed errors).
//! - [`config_edit`]: commissioning edits of the config file (links and units), validated as
//!   `check-config` validates and written atomically, comments kept.
//! - [`signal`]: SIGTERM/SIGINT (stop) and SIGHUP (reload).
//! - [`app`]: wiring — builds the components, spawns the tasks, owns shutdown and reload;
//!   [`app::adapters`] puts the engines behind the API's port traits and applies grants.
//! - [`cli`]: the command line that `main.rs` dispatches: clap types and each command's code
//!   (including `sitegate demo` with the `sim` feature).
//!
//! Imports run one way, down this stack: `cli` → `app` → the domain modules → `model`,
//! `clock`, `util`. A domain module never imports `app` or `cli`; `tests/module_graph.rs`
//! fails on any import cycle between files.
//! - [`util`], [`util_b64`]: randomness, hashing, private files, base64url.

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod bms;
pub mod business;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_edit;
pub mod config_load;
pub mod delegation;
pub mod grants;
pub mod logging;
pub mod metrics;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod notify;
pub mod outbox;
pub mod provision;
pub mod setup;
pub mod signal;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod tls;
pub mod util;
pub mod util_b64;
