//! The Modbus server face for building management systems and SCADA.
//!
//! A BMS talks Modbus TCP to the box; the box answers for the configured units at configured unit
//! ids, with each unit's own profile addresses (the vendor map). Every request is authorized by
//! the same decision engine as the LAN API ([`crate::authz::Index::decide_with_role`]), with the
//! role the client's certificate carries (Modbus/TCP Security, [`tls`]) or the role configured
//! for a legacy client's source address (plain listener); writes go through the engine's
//! validated write path with read-back. See `docs/modbus.md`.

pub mod cert;
pub mod service;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::Role;

/// The `[modbus_server]` section, owned by the config.
pub use crate::config::modbus_server as config;
pub use crate::config::modbus_server::{BmsConfig, PlainAllow, RoleMap};
pub use service::Face;

/// Who is on the other end of a Modbus connection, as authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The sitegate role the credential maps to.
    pub role: Role,
    /// The role as the credential spelled it (certificate extension value, or the config).
    pub role_name: String,
    /// The named client (certificate subject CN, or the configured name of a source address).
    pub client: Option<String>,
    /// The certificate serial (hex), for the audit trail; empty for the plain listener.
    pub serial: String,
}

/// The running listeners' addresses (the real ports when the config said 0).
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub tls: Option<SocketAddr>,
    pub plain: Option<SocketAddr>,
}

/// Binds the configured listeners and spawns their accept loops on `tasks`.
pub async fn serve(
    cfg: &BmsConfig,
    face: Arc<Face>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Listening> {
    let mut out = Listening::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    if let Some(t) = &cfg.tls {
        let roles = Arc::new(cfg.roles.clone());
        let sc = tls::server_config(&t.files, roles.clone())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
        let listener = TcpListener::bind(t.listen)
            .await
            .map_err(|e| anyhow::anyhow!("Modbus/TLS listener on {}: {e}", t.listen))?;
        out.tls = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "Modbus/TCP Security listener started");
        let face = face.clone();
        let stop = shutdown.child_token();
        let timeout = cfg.handshake_timeout;
        let slots = slots.clone();
        tasks.spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream: tokio::net::TcpStream, peer: SocketAddr| {
                let accepted = slot(&slots, peer).map(|permit| {
                    let identity = Arc::new(OnceLock::new());
                    let transport = tls::LazyTls::new(
                        &acceptor,
                        stream,
                        peer,
                        timeout,
                        roles.clone(),
                        identity.clone(),
                    );
                    (
                        service::Session::new(face.clone(), identity, peer, permit),
                        transport,
                    )
                });
                async move { Ok(accepted) }
            };
            let on_error = |e: std::io::Error| {
                tracing::debug!(error = %e, "Modbus/TLS connection ended");
            };
            if let Err(e) = server
                .serve_until(&on_connected, on_error, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "the Modbus/TLS listener failed");
            }
        });
    }
    if let Some(p) = &cfg.plain {
        let listener = TcpListener::bind(p.listen)
            .await
            .map_err(|e| anyhow::anyhow!("plain Modbus listener on {}: {e}", p.listen))?;
        out.plain = Some(listener.local_addr()?);
        tracing::warn!(
            addr = %listener.local_addr()?,
            "plain Modbus TCP listener started (no encryption; source addresses only)"
        );
        let allow: Arc<Vec<PlainAllow>> = Arc::new(p.allow.clone());
        let face = face.clone();
        let stop = shutdown.child_token();
        let slots = slots.clone();
        tasks.spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream: tokio::net::TcpStream, peer: SocketAddr| {
                let found = allowed(&allow, peer.ip());
                let face = face.clone();
                let permit = found.as_ref().and_then(|_| slot(&slots, peer));
                async move {
                    let Some(a) = found else {
                        tracing::warn!(peer = %peer, "plain Modbus connection refused: source address not allowed");
                        return Ok(None);
                    };
                    let Some(permit) = permit else {
                        return Ok(None);
                    };
                    let identity = Arc::new(OnceLock::new());
                    let _ = identity.set(Identity {
                        role: a.role,
                        role_name: a.role.as_str().to_string(),
                        client: a.client.clone(),
                        serial: String::new(),
                    });
                    Ok(Some((
                        service::Session::new(face, identity, peer, permit),
                        stream,
                    )))
                }
            };
            let on_error = |e: std::io::Error| {
                tracing::debug!(error = %e, "plain Modbus connection ended");
            };
            if let Err(e) = server
                .serve_until(&on_connected, on_error, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "the plain Modbus listener failed");
            }
        });
    }
    Ok(out)
}

/// A place under `max_connections`, or `None` (logged) when every place is taken.
fn slot(
    slots: &Arc<tokio::sync::Semaphore>,
    peer: SocketAddr,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            tracing::warn!(peer = %peer, "Modbus connection refused: too many open connections");
            None
        }
    }
}

/// The entry allowing a source address (IPv4-mapped IPv6 compared as IPv4).
fn allowed(list: &[PlainAllow], ip: IpAddr) -> Option<PlainAllow> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    list.iter().find(|a| a.source == ip).cloned()
}
