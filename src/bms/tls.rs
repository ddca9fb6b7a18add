//! Modbus/TCP Security (the Modbus Organization's TLS profile, port 802): mutual TLS with the
//! client's role carried in its certificate.
//!
//! The client certificate is verified by rustls's `WebPkiClientVerifier` (chain to the configured
//! CA, validity, key usage `clientAuth`, the configured CRLs), and then — still inside the
//! handshake — the role extension (OID 1.3.6.1.4.1.50316.802.1, a UTF8String) is parsed with
//! `x509-parser` and looked up in the role map. A certificate that fails any of these is refused
//! at the handshake with a log line that says why; no Modbus request is ever read from it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Identity, RoleMap};

/// The Modbus/TCP Security role extension.
pub const ROLE_OID: &str = "1.3.6.1.4.1.50316.802.1";
/// The same OID as arcs (for certificate issuance).
pub const ROLE_OID_ARCS: [u64; 9] = [1, 3, 6, 1, 4, 1, 50316, 802, 1];

/// Why the TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{0}` holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("`{0}` holds no PEM private key")]
    NoKey(PathBuf),
    #[error("`{0}` holds no PEM certificate revocation list")]
    NoCrl(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.clone(),
        source,
    })
}

pub use crate::config::modbus_server::TlsFiles;

/// Builds the rustls server config: TLS 1.2 and 1.3, client certificate required, chained to the
/// CA, checked against the CRLs, and carrying a role the map knows.
pub fn server_config(files: &TlsFiles, roles: Arc<RoleMap>) -> Result<ServerConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(files, roles, provider.clone())?;
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate(files.cert.clone()));
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsSetupError::NoKey(files.key.clone()))?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))
}

/// Reads the CA and the CRLs the way [`server_config`] does, without building a listener: a
/// configuration reload checks them before it stops the running listener (a CRL file left
/// unreadable or half-written then refuses the reload instead of taking the face down).
pub fn check_client_trust(files: &TlsFiles) -> Result<(), TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    client_verifier(files, Arc::new(RoleMap::standard()), provider).map(|_| ())
}

/// The client certificate verifier: chain to the CA, the CRLs, then the role extension.
fn client_verifier(
    files: &TlsFiles,
    roles: Arc<RoleMap>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut store = RootCertStore::empty();
    let ca_pem = read(&files.ca)?;
    let mut any = false;
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|_| TlsSetupError::NoCertificate(files.ca.clone()))?;
        store
            .add(c)
            .map_err(|e| TlsSetupError::Config(format!("CA `{}`: {e}", files.ca.display())))?;
        any = true;
    }
    if !any {
        return Err(TlsSetupError::NoCertificate(files.ca.clone()));
    }
    let mut crls = Vec::new();
    for path in &files.crls {
        let pem = read(path)?;
        let list: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|_| TlsSetupError::NoCrl(path.clone()))?;
        if list.is_empty() {
            return Err(TlsSetupError::NoCrl(path.clone()));
        }
        crls.extend(list);
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .with_crls(crls)
        .build()
        .map_err(|e| TlsSetupError::Config(format!("client verifier: {e}")))?;
    Ok(Arc::new(RoleVerifier {
        inner: webpki,
        roles,
    }))
}

/// Why a client certificate that chains correctly is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the certificate has no Modbus role extension ({ROLE_OID})")]
    NoRole,
    #[error("the Modbus role extension is not a UTF8String")]
    BadRole,
    #[error("the certificate carries the Modbus role extension more than once")]
    DuplicateRole,
    #[error("the role `{0}` is not mapped to a sitegate role")]
    UnknownRole(String),
}

/// The identity a verified client certificate carries: its role (mapped) and its subject
/// common name (the named client of the audit trail).
pub fn identity_of(der: &[u8], roles: &RoleMap) -> Result<Identity, RoleError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| RoleError::Unparsable)?;
    let mut found: Option<String> = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() != ROLE_OID {
            continue;
        }
        if found.is_some() {
            return Err(RoleError::DuplicateRole);
        }
        let (rest, s) = x509_parser::asn1_rs::Utf8String::from_der(ext.value)
            .map_err(|_| RoleError::BadRole)?;
        if !rest.is_empty() {
            return Err(RoleError::BadRole);
        }
        found = Some(s.string());
    }
    let role_name = found.ok_or(RoleError::NoRole)?;
    let role = roles
        .get(&role_name)
        .ok_or_else(|| RoleError::UnknownRole(crate::audit::cap_str(&role_name).into_owned()))?;
    let client = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(Identity {
        role,
        role_name,
        client,
        serial: cert.raw_serial_as_string(),
    })
}

/// `WebPkiClientVerifier` plus the role extension check, so both refuse at the handshake.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    roles: Arc<RoleMap>,
}

impl ClientCertVerifier for RoleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::warn!(
                error = %e,
                "Modbus/TLS client certificate refused: {}",
                refusal(&e)
            );
            return Err(e);
        }
        match identity_of(end_entity.as_ref(), &self.roles) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(why) => {
                tracing::warn!(reason = %why, "Modbus/TLS client certificate refused: {why}");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A plain-words reason for the log line of a refused certificate.
fn refusal(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "the certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "the certificate is not valid yet",
            C::Revoked => "the certificate is revoked by the configured CRL",
            C::UnknownIssuer => "the certificate is not issued by the configured CA",
            C::BadSignature => "the certificate's signature is invalid",
            C::UnknownRevocationStatus => "no CRL of the issuer is configured",
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                "the configured CRL has expired"
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the certificate is not for client authentication"
            }
            _ => "the certificate is invalid",
        },
        rustls::Error::NoCertificatesPresented => "no client certificate was presented",
        _ => "the certificate was not accepted",
    }
}

type Accepting = Pin<Box<tokio::time::Timeout<tokio_rustls::Accept<TcpStream>>>>;

enum State {
    Handshake(Accepting),
    Ready(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

/// A server-side TLS stream whose handshake runs on first use, inside the connection's own task
/// (so a slow or silent client never holds up the accept loop), bounded by a timeout. Once the
/// handshake completes the client's [`Identity`] is published to the connection's service.
pub struct LazyTls {
    state: State,
    identity: Arc<OnceLock<Identity>>,
    roles: Arc<RoleMap>,
    peer: SocketAddr,
}

impl LazyTls {
    pub fn new(
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
        roles: Arc<RoleMap>,
        identity: Arc<OnceLock<Identity>>,
    ) -> LazyTls {
        LazyTls {
            state: State::Handshake(Box::pin(tokio::time::timeout(
                timeout,
                acceptor.accept(stream),
            ))),
            identity,
            roles,
            peer,
        }
    }

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut tokio_rustls::server::TlsStream<TcpStream>>> {
        if let State::Handshake(f) = &mut self.state {
            let res = ready!(f.as_mut().poll(cx));
            match res {
                Err(_) => {
                    tracing::warn!(peer = %self.peer, "Modbus/TLS handshake timed out");
                    self.state = State::Failed;
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %self.peer, error = %e, "Modbus/TLS handshake refused");
                    self.state = State::Failed;
                }
                Ok(Ok(s)) => {
                    let id = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| identity_of(c.as_ref(), &self.roles));
                    match id {
                        Some(Ok(id)) => {
                            tracing::info!(
                                peer = %self.peer,
                                role = %id.role.as_str(),
                                client = id.client.as_deref().unwrap_or("-"),
                                "Modbus/TLS client connected"
                            );
                            let _ = self.identity.set(id);
                            self.state = State::Ready(Box::new(s));
                        }
                        // Not reachable: the verifier refused these already.
                        _ => self.state = State::Failed,
                    }
                }
            }
        }
        match &mut self.state {
            State::Ready(s) => Poll::Ready(Ok(s)),
            State::Handshake(_) | State::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "Modbus/TLS handshake failed",
            ))),
        }
    }
}

impl AsyncRead for LazyTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let s = ready!(this.poll_ready(cx))?;
        Pin::new(s).poll_read(cx, buf)
    }
}

impl AsyncWrite for LazyTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let s = ready!(this.poll_ready(cx))?;
        Pin::new(s).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Ready(s) => Pin::new(s.as_mut()).poll_flush(cx),
            State::Handshake(_) | State::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Ready(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            State::Handshake(_) | State::Failed => Poll::Ready(Ok(())),
        }
    }
}
