//! What every subcommand shares: the default config path, and loading the config with its
//! problems printed and turned into the exit code 78 (EX_CONFIG) — the one place a config error
//! becomes an exit code.

use std::path::Path;

use crate::config::{Config, EX_CONFIG};
use crate::modbus::ProfileRegistry;

/// Default config location on an installed box.
pub const DEFAULT_CONFIG: &str = "/etc/sitegate/sitegate.toml";

/// Loads the config or prints its problems; `Err` carries the exit code (78, EX_CONFIG).
pub fn load_config(path: &Path) -> Result<Config, i32> {
    load_with_profiles(path).map(|(cfg, _)| cfg)
}

/// Like [`load_config`], with the device profiles the config can use.
pub fn load_with_profiles(path: &Path) -> Result<(Config, ProfileRegistry), i32> {
    crate::config_load::load_with_profiles(path).map_err(|e| {
        eprint!("{e}");
        EX_CONFIG
    })
}
