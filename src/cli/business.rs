//! `sitegate business …`: the site owner's suspension of a service business from the box's
//! shell (for when the LAN API is out of reach). Writes the same rows, audit records and retained
//! state message as the API; a running daemon picks the change up within one housekeeping tick
//! (5 s). The owner is named with `--as <email>` and must be the site owner in the applied
//! bundle; the audit actor is `cli:<user id>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;

use crate::audit::{Audit, Event};
use crate::authz::{Index, Inputs};
use crate::business::{Change, load, restore_in, suspend_in};
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::grants::GrantEngine;
use crate::model::BusinessId;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum BusinessCommand {
    /// List the service businesses of the applied bundle and the suspensions in force.
    List {
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Suspend every grant held by a business's users on this box.
    Suspend {
        business: String,
        /// The site owner's email (must be the owner in the applied bundle).
        #[arg(long = "as")]
        owner: String,
        /// Why (audit trail and cloud), at most 500 characters.
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Lift a suspension.
    Restore {
        business: String,
        /// The site owner's email (must be the owner in the applied bundle).
        #[arg(long = "as")]
        owner: String,
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

struct Opened {
    store: Store,
    audit: Audit,
    index: Index,
    state_topic: String,
}

fn open(config: &Path) -> Result<Opened, i32> {
    let cfg = super::shared::load_config(config)?;
    let Some(site) = cfg.site.clone() else {
        eprintln!("error: the box is not provisioned (no `[site]` in the config)");
        return Err(1);
    };
    let store = Store::open_in(&cfg.state_dir).map_err(|e| {
        eprintln!("error: {e}");
        1
    })?;
    let clock: SharedClock = Arc::new(SystemClock);
    let audit = Audit::new(
        store.clone(),
        clock.clone(),
        Some(format!("{}/events", site.topic_root())),
    );
    let engine = GrantEngine::open(
        store.clone(),
        audit.clone(),
        clock,
        site.id.clone(),
        &cfg.grants,
    )
    .map_err(|e| {
        eprintln!("error: {e}");
        1
    })?;
    let suspended = store
        .with_conn(|c| load(c))
        .map(|l| crate::business::authz_input(&l))
        .map_err(|e| {
            eprintln!("error: {e}");
            1
        })?;
    let index = Index::build(&Inputs {
        site: Some(site.id.clone()),
        state: engine.snapshot(),
        suspended,
        ..Inputs::default()
    });
    Ok(Opened {
        store,
        audit,
        index,
        state_topic: format!("{}/suspensions", site.topic_root()),
    })
}

/// The owner named by `email`, or an audited refusal (exit 1).
fn owner_actor(o: &Opened, email: &str, business: &str, kind: &'static str) -> Result<String, i32> {
    let user = o.index.user_by_email(email).map(|u| u.id.clone());
    match user {
        Some(id) if crate::business::owner_refusal(&o.index, &id).is_none() => {
            Ok(format!("cli:{id}"))
        }
        other => {
            let reason = other
                .as_ref()
                .and_then(|id| crate::business::owner_refusal(&o.index, id))
                .unwrap_or("not_site_owner");
            let ev = Event::new(kind, "denied")
                .actor(other.map_or_else(|| "cli".to_string(), |id| format!("cli:{id}")))
                .detail(serde_json::json!({
                    "business": crate::audit::cap_str(business),
                    "reason": reason,
                }));
            let _ = o.audit.record_blocking(&ev);
            eprintln!("error: `{email}` is not the site owner in the applied bundle");
            Err(1)
        }
    }
}

/// Runs `sitegate business …`.
pub fn run(cmd: BusinessCommand) -> i32 {
    match run_inner(cmd) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run_inner(cmd: BusinessCommand) -> Result<(), i32> {
    let fail = |e: crate::store::StoreError| {
        eprintln!("error: {e}");
        1
    };
    let now = || SystemClock.now();
    match cmd {
        BusinessCommand::List { config } => {
            let o = open(&config)?;
            let list = o.store.with_conn(|c| load(c)).map_err(fail)?;
            let businesses: Vec<serde_json::Value> = o
                .index
                .businesses()
                .into_iter()
                .map(|(b, members)| serde_json::json!({"business": b, "members": members}))
                .collect();
            let doc = serde_json::json!({"businesses": businesses, "suspended": list});
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            Ok(())
        }
        BusinessCommand::Suspend {
            business,
            owner,
            note,
            config,
        } => {
            let o = open(&config)?;
            let actor = owner_actor(&o, &owner, &business, "business_suspended")?;
            if note.chars().count() > crate::business::MAX_NOTE_CHARS {
                eprintln!(
                    "error: the note is longer than {} characters",
                    crate::business::MAX_NOTE_CHARS
                );
                return Err(1);
            }
            let Ok(id) = BusinessId::new(business.as_str()) else {
                eprintln!("error: no such business on this site");
                return Err(1);
            };
            let members = o.index.businesses().remove(&id);
            let already = o
                .store
                .with_conn(|c| crate::business::is_suspended_in(c, &id))
                .map_err(fail)?;
            if members.is_none() && !already {
                eprintln!("error: no user of the applied bundle belongs to `{id}`");
                return Err(1);
            }
            let members = members.unwrap_or_default();
            let topic = o.state_topic.clone();
            let change = o
                .store
                .with_conn(|c| {
                    suspend_in(
                        c,
                        &o.audit,
                        Some(&topic),
                        &id,
                        &members,
                        &actor,
                        &note,
                        now(),
                    )
                })
                .map_err(fail)?;
            match change {
                Change::Done(s) => println!(
                    "suspended `{id}` ({} user(s)); a running daemon applies it within 5 s",
                    s.members.len()
                ),
                Change::Unchanged(_) => println!("`{id}` was already suspended"),
            }
            Ok(())
        }
        BusinessCommand::Restore {
            business,
            owner,
            config,
        } => {
            let o = open(&config)?;
            let actor = owner_actor(&o, &owner, &business, "business_restored")?;
            let Ok(id) = BusinessId::new(business.as_str()) else {
                eprintln!("error: `{business}` is not suspended");
                return Err(1);
            };
            let topic = o.state_topic.clone();
            let out = o
                .store
                .with_conn(|c| restore_in(c, &o.audit, Some(&topic), &id, &actor, now()))
                .map_err(fail)?;
            match out {
                Some(_) => {
                    println!("restored `{id}`; a running daemon applies it within 5 s");
                    Ok(())
                }
                None => {
                    eprintln!("error: `{id}` is not suspended");
                    Err(1)
                }
            }
        }
    }
}
