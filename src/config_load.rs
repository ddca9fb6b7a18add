//! Reading the site config file together with the device profiles it may use.
//!
//! The config names profiles (built-in or from `[profiles] dir`), so the two are read and
//! validated as one: units are checked against the registry, and every problem, of the config
//! or of a profile file, is reported in one [`ConfigError`]. The daemon (start-up, reload,
//! restart after first-boot setup), provisioning and the CLI tools all load through here. This
//! module returns typed errors; only the CLI turns them into exit codes (78, EX_CONFIG).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Problem};
use crate::modbus::ProfileRegistry;

/// `[profiles] dir` of the config file at `path`, resolved against the file's directory as the
/// config resolves it; read before the config is validated, so that its units may name a profile
/// from that directory. `None` when unset, or when the file cannot be read or parsed (validating
/// it then says why).
pub fn profiles_dir_of(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let dir = Path::new(table.get("profiles")?.get("dir")?.as_str()?);
    Some(if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).join(dir)
    })
}

/// Names of the device profiles available (built-in plus those in `dir`).
/// A broken profile directory yields only the built-ins here; `ProfileRegistry::load` reports
/// its problems when the daemon starts.
pub fn profile_names(dir: Option<&Path>) -> HashSet<String> {
    match ProfileRegistry::load(dir) {
        Ok(r) => r.names().into_iter().collect(),
        Err(_) => ProfileRegistry::builtin()
            .map(|r| r.names().into_iter().collect())
            .unwrap_or_default(),
    }
}

/// Loads and validates the config; the error lists every problem, one per line (what
/// `check-config` prints; a configuration reload audits it).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_profiles(path).map(|(cfg, _)| cfg)
}

/// Loads the config and the device profiles it can use (built-ins plus `[profiles] dir`),
/// validating both: units are checked against that registry (names, VAs, base offsets, units
/// sharing a slave id without overlap), and every problem of a profile file is reported with the
/// file and key, with the config's own problems.
pub fn load_with_profiles(path: &Path) -> Result<(Config, ProfileRegistry), ConfigError> {
    let registry = ProfileRegistry::load(profiles_dir_of(path).as_deref());
    // With a broken profile file, units are not judged by name (its problems explain them).
    let loaded = match &registry {
        Ok(reg) => Config::load(path, &|p| reg.get(p).is_some()),
        Err(_) => Config::load(path, &|_| true),
    };
    match (loaded, registry) {
        (Ok(cfg), Ok(reg)) => match cfg.check_profiles(&reg) {
            Ok(()) => Ok((cfg, reg)),
            Err(problems) => Err(ConfigError {
                file: Some(path.to_path_buf()),
                problems,
            }),
        },
        (loaded, registry) => {
            let mut err = match loaded {
                Err(e) => e,
                Ok(_) => ConfigError {
                    file: Some(path.to_path_buf()),
                    problems: Vec::new(),
                },
            };
            if let Err(problems) = registry {
                err.problems
                    .extend(problems.into_iter().map(|message| Problem {
                        path: "profiles.dir".into(),
                        message,
                    }));
            }
            Err(err)
        }
    }
}
