//! The local console: a Unix domain socket (default `/run/sitegate/console.sock`, `[api]
//! console_socket`) through which the installer tools on the box (`sitegate scan`, `sitegate
//! units test`, `sitegate units watch`) reach the running daemon, so they never fight it for a
//! serial port or a gateway's only connection.
//!
//! Who: each connection's peer credentials (`SO_PEERCRED`) are checked when it is accepted; only
//! uid 0 and the daemon's own uid are admitted ([`admitted`]), anyone else gets one `403
//! console_refused` answer, is audited (kind `console`, outcome `denied`) and is cut off. The
//! socket file is mode 0660, owned by the daemon's user. An admitted caller acts as the fixed
//! principal `console:uid=N` ([`crate::model::UserId::console`]), which the audit trail records
//! as the actor.
//!
//! What: least privilege. The console serves only the routes of [`CONSOLE_ROUTES`] (scans, the
//! unit test, unit listing and detail for the live values), through the same handlers as the
//! LAN API, with an authorization port that allows `view` and `diagnose` and nothing else: no
//! writes, no commands, no grants, no configuration. Root and the service user can already read
//! the database and the device key and can stop the daemon to take the bus; the console gives
//! them no more than that, only without stopping the site.
//!
//! It must never admit a uid other than those two, never answer a route outside the list, and
//! never fail the daemon's start (a socket it cannot make is logged; the tools then use the bus
//! directly, as without a daemon).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ports::{AuthzPort, Decision, DenyReason, Me, Target, UnitsPort};
use super::state::ApiState;
use crate::audit::{Audit, Event};
use crate::model::{CapSet, Capability, UnitId, UserId};

/// The socket file's mode: the daemon's user and group (root passes anyway).
pub const SOCKET_MODE: u32 = 0o660;

/// The error code of a refused connection's one answer.
pub const REFUSED_CODE: &str = "console_refused";

/// The LAN API routes the console serves (method, path), and nothing else.
pub const CONSOLE_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/api/v1/units"),
    (Method::GET, "/api/v1/units/{unit}"),
    (Method::POST, "/api/v1/units/{unit}/test"),
    (Method::GET, "/api/v1/scans"),
    (Method::POST, "/api/v1/scans"),
    (Method::GET, "/api/v1/scans/{id}"),
    (Method::DELETE, "/api/v1/scans/{id}"),
];

/// Refusals of one uid audited at most this often (a local user looping on the socket must not
/// fill the audit trail); the ones in between are counted in the next record.
const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(60);

/// The Unix user (and process) at the other end of an admitted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsolePeer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ConsoleListener>>
    for ConsolePeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ConsoleListener>) -> Self {
        *stream.remote_addr()
    }
}

/// May a connection from `peer_uid` use the console of a daemon running as `daemon_uid`?
/// Root and the daemon's own user only; everyone else is refused.
pub fn admitted(peer_uid: u32, daemon_uid: u32) -> bool {
    match peer_uid {
        // Root: can read the database and the device key, and stop the daemon, anyway.
        0 => true,
        // The service user: the daemon itself runs with exactly these rights.
        uid if uid == daemon_uid => true,
        // Any other local user (group members included): deny by default.
        _ => false,
    }
}

/// The console's authorization: `view` and `diagnose` on the site and on every unit of the
/// inventory, for console principals only; everything else is denied.
struct ConsoleAuthz {
    units: Arc<dyn UnitsPort>,
}

impl ConsoleAuthz {
    const CAPS: [Capability; 2] = [Capability::View, Capability::Diagnose];
}

impl AuthzPort for ConsoleAuthz {
    fn decide(&self, user: &UserId, capability: Capability, target: &Target) -> Decision {
        if !user.is_console() {
            // Only the console face asks this port, and only for console principals.
            return Decision::Deny(DenyReason::UnknownUser);
        }
        if !Self::CAPS.contains(&capability) {
            // No control, configure or manage_users on the console: no writes, no grants.
            return Decision::Deny(DenyReason::RoleLacks);
        }
        match target {
            Target::Site => Decision::Allow,
            Target::Unit(u) => self.unit_decision(u),
            Target::Point { unit, required } => {
                if Self::CAPS.contains(required) {
                    self.unit_decision(unit)
                } else {
                    Decision::Deny(DenyReason::RoleLacks)
                }
            }
            // No console route names a group.
            Target::Group(_) => Decision::Deny(DenyReason::NoGrant),
        }
    }

    fn visible_units(&self, user: &UserId) -> Vec<(UnitId, CapSet)> {
        if !user.is_console() {
            return Vec::new();
        }
        let mut caps = CapSet::EMPTY;
        for c in Self::CAPS {
            caps.insert(c);
        }
        self.units
            .units()
            .into_iter()
            .map(|u| (u.id, caps))
            .collect()
    }

    fn me(&self, _user: &UserId) -> Option<Me> {
        None
    }
}

impl ConsoleAuthz {
    fn unit_decision(&self, unit: &UnitId) -> Decision {
        if self.units.unit(unit).is_some() {
            Decision::Allow
        } else {
            Decision::Deny(DenyReason::UnknownUnit)
        }
    }
}

/// The state of the console face: the LAN state's engines with [`ConsoleAuthz`] (the router is
/// `super::console_router`).
pub(super) fn face(lan: &ApiState) -> ApiState {
    lan.console_face(Arc::new(ConsoleAuthz {
        units: lan.units().clone(),
    }))
}

/// Why the console socket was not made (the daemon runs on without it).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the directory of `{0}` does not exist")]
    NoDirectory(PathBuf),
    #[error("`{0}` exists and is not a socket; left as it is")]
    NotASocket(PathBuf),
    #[error("another process serves `{0}`")]
    InUse(PathBuf),
    #[error("cannot make `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Accepts connections and admits only [`admitted`] uids; refuses (and audits) the others.
pub struct ConsoleListener {
    inner: UnixListener,
    daemon_uid: u32,
    audit: Audit,
    /// Per refused uid: when its refusal was last audited, and refusals since.
    refused: HashMap<u32, (Instant, u64)>,
}

impl ConsoleListener {
    async fn refuse(&mut self, stream: UnixStream, uid: u32, pid: Option<i32>) {
        tracing::warn!(
            uid,
            pid,
            "console connection refused (only root and the daemon's user)"
        );
        let now = Instant::now();
        let due = match self.refused.get_mut(&uid) {
            Some((last, since)) if now.duration_since(*last) < REFUSAL_AUDIT_EVERY => {
                *since += 1;
                None
            }
            Some((last, since)) => {
                let n = *since;
                *last = now;
                *since = 0;
                Some(n)
            }
            None => {
                self.refused.insert(uid, (now, 0));
                Some(0)
            }
        };
        if let Some(earlier) = due {
            let ev = Event::new("console", "denied")
                .actor(UserId::console(uid).as_str())
                .detail(json!({
                    "uid": uid,
                    "pid": pid,
                    "reason": "uid_not_admitted",
                    "refused_since_last_record": earlier,
                }));
            let _ = self.audit.record(ev).await;
        }
        tokio::spawn(answer_refused(stream));
    }
}

impl axum::serve::Listener for ConsoleListener {
    type Io = UnixStream;
    type Addr = ConsolePeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let stream = match self.inner.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait, never spin.
                    tracing::warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(cred) = stream.peer_cred() else {
                // No credentials, no admission.
                continue;
            };
            let peer = ConsolePeer {
                uid: cred.uid(),
                pid: cred.pid(),
            };
            if admitted(peer.uid, self.daemon_uid) {
                return (stream, peer);
            }
            self.refuse(stream, peer.uid, peer.pid).await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ConsolePeer {
            uid: self.daemon_uid,
            pid: None,
        })
    }
}

/// The one answer a refused connection gets, then the connection is closed.
pub(crate) async fn answer_refused(mut stream: UnixStream) {
    let body = json!({
        "error": REFUSED_CODE,
        "message": "the console admits only root and the daemon's user",
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let send = async {
        // Read the request head first (bounded), so that an HTTP client sees the answer to its
        // request rather than bytes it did not ask for, or a reset.
        let mut head_seen = Vec::new();
        let mut buf = [0u8; 1024];
        while head_seen.len() < 16 * 1024 && !head_seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head_seen.extend_from_slice(&buf[..n]);
        }
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), send).await;
}

/// Makes the socket at `path` (replacing a stale one nobody answers on, never a live one or a
/// file that is not a socket), mode [`SOCKET_MODE`], and serves `app` (the console router,
/// `super::console_router`) until `shutdown`; then removes the socket file if it is still the
/// one made here.
pub async fn serve(
    app: Router,
    audit: Audit,
    path: &Path,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ConsoleError> {
    let io = |source| ConsoleError::Io {
        path: path.to_path_buf(),
        source,
    };
    match path.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => return Err(ConsoleError::NoDirectory(path.to_path_buf())),
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ConsoleError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ConsoleError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let inner = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io)?;
    // The file's owner is this process's effective uid: the daemon's user.
    let meta = std::fs::metadata(path).map_err(io)?;
    let (daemon_uid, made) = (meta.uid(), (meta.dev(), meta.ino()));
    let listener = ConsoleListener {
        inner,
        daemon_uid,
        audit,
        refused: HashMap::new(),
    };
    let app = app.into_make_service_with_connect_info::<ConsolePeer>();
    let path = path.to_path_buf();
    tracing::info!(socket = %path.display(), "console listening");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the console server failed");
        }
        if std::fs::metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == made) {
            let _ = std::fs::remove_file(&path);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_the_daemons_own_user_are_admitted() {
        let daemon = 998;
        assert!(admitted(0, daemon));
        assert!(admitted(998, daemon));
        assert!(!admitted(1000, daemon));
        assert!(!admitted(997, daemon));
        assert!(!admitted(999, daemon));
        assert!(!admitted(u32::MAX, daemon));
        // A daemon run as root admits root only.
        assert!(admitted(0, 0));
        assert!(!admitted(1000, 0));
    }

    #[test]
    fn the_console_principal_is_outside_the_id_grammar() {
        let p = UserId::console(0);
        assert_eq!(p.as_str(), "console:uid=0");
        assert!(p.is_console());
        assert!(UserId::new("console:uid=0").is_err());
        assert!(!UserId::new("console-uid-0").unwrap().is_console());
    }
}
