//! `sitegate lockouts list | clear KEY`: the box owner's view of login throttles and lockouts,
//! on the box itself (root on the box may read the state directory; no session needed).
//!
//! Works beside a running daemon (SQLite serialises the writers). A clear is audited as
//! `lockout_cleared` with actor `cli`, and goes upward with the other events.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use serde_json::json;

use crate::audit::{Audit, Event};
use crate::auth::store;
use crate::clock::{SystemClock, rfc3339};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum LockoutsCommand {
    /// List login throttles and lockouts (accounts, device cookies, client addresses).
    List {
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Clear one lockout by the key `list` shows (audited as `lockout_cleared`).
    Clear {
        /// The key, e.g. `email:3f2a…`, `device:9c1e…` or `ip:192.168.1.20`.
        key: String,
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Runs one subcommand; returns the exit code (0 ok, 1 failure or no such lockout, 78 config).
pub fn run(cmd: LockoutsCommand) -> i32 {
    let config = match &cmd {
        LockoutsCommand::List { config } | LockoutsCommand::Clear { config, .. } => config,
    };
    let cfg = match super::shared::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match Store::open_in(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot open the state in `{}`: {e}",
                cfg.state_dir.display()
            );
            return 1;
        }
    };
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    match cmd {
        LockoutsCommand::List { .. } => {
            let now = clock.now();
            match store.with_conn(|c| store::lockouts(c, now)) {
                Ok(list) if list.is_empty() => {
                    println!("no login throttles or lockouts");
                    0
                }
                Ok(list) => {
                    for l in list {
                        println!(
                            "{}\t{}\tfailures={}\t{}",
                            l.key,
                            l.label,
                            l.failures,
                            match l.locked_until {
                                Some(t) => format!("locked until {}", rfc3339(t)),
                                None => format!("delayed until {}", rfc3339(l.next_allowed)),
                            }
                        );
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        LockoutsCommand::Clear { key, .. } => {
            let topic = cfg
                .site
                .as_ref()
                .map(|s| format!("{}/events", s.topic_root()));
            let audit = Audit::new(store.clone(), clock, topic);
            let ev = Event::new("lockout_cleared", "ok")
                .actor("cli")
                .detail(json!({ "key": key }));
            let cleared = store.with_conn(|c| {
                let tx = c.transaction()?;
                let n = store::clear_throttle(&tx, &key)?;
                if n > 0 {
                    audit.record_in(&tx, &ev)?;
                }
                tx.commit()?;
                Ok(n)
            });
            match cleared {
                Ok(0) => {
                    eprintln!("error: no lockout `{}`", crate::grants::short(&key));
                    1
                }
                Ok(_) => {
                    println!("cleared `{key}`");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}
