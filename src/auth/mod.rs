//! Local authentication: password and installer-token login, bearer sessions, failed-login
//! throttling and lockouts.
//!
//! Owns the `sessions` and `login_throttle` tables. A session is a random 256-bit
//! bearer token of which only the SHA-256 is stored; [`Auth::authenticate`] checks it on every
//! request, and authorization is decided afresh by [`crate::authz`] each time, so revocation,
//! deactivation and expiry bite live sessions at once. An installer token presented at the login
//! is admitted by the access-state owner (its envelope kept and re-verified on every start); this
//! module never writes authorization inputs.
//!
//! It must never log, audit or store a password, a bearer token or a derived hash of a password;
//! an attempted email appears in the audit log only as a hash. Unknown accounts cost the same
//! PBKDF2 work as a wrong password.

use crate::grants::password;
pub(crate) mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::access::{Grant, Origin, User};
use crate::audit::{Audit, Event};
use crate::authz::Target;
use crate::authz::owner::Access;
use crate::clock::SharedClock;
use crate::model::{Capability, UserId};
use crate::store::{Store, StoreError};

pub use crate::grants::password::Verifier;

/// Makes a new verifier string for `password` (tools and tests); iterations are clamped to the
/// accepted range.
pub fn hash_password(password: &str, iterations: u32) -> String {
    password::hash_password(
        password.as_bytes(),
        iterations.clamp(1, password::MAX_ITERATIONS),
    )
    .unwrap_or_default()
}
pub use store::Lockout;

/// Verifies and admits cloud-signed installer tokens (`kind:"token"` envelopes). The access-state
/// owner over the grants engine implements this; [`Auth`] never parses tokens itself.
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies `envelope` and returns its user and grant; changes nothing.
    fn verify(&self, envelope: &[u8]) -> Result<(User, Grant), String>;
    /// Verifies `envelope` again and admits it: keeps the envelope as received and publishes an
    /// index in which its grant is in force before returning. Blocking.
    fn admit(&self, envelope: &[u8]) -> Result<(User, Grant), String>;
}

/// Why authentication failed. `status()` is the HTTP status the API should answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("too many failed logins; try again in {} s", retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
    #[error("account locked after repeated failed logins; try again in {} s or ask an admin", retry_after.as_secs().max(1))]
    Locked { retry_after: Duration },
    #[error("installer token rejected: {0}")]
    TokenRejected(String),
    #[error("installer token login is not available on this box")]
    TokenUnavailable,
    #[error("missing or malformed session token")]
    Unauthenticated,
    #[error("session expired; log in again")]
    SessionExpired,
    #[error("account is deactivated")]
    UserInactive,
    #[error("the password changed since this session was opened; log in again")]
    PasswordChanged,
    #[error("not allowed")]
    Forbidden,
    #[error("no lockout for `{0}`")]
    NoSuchLockout(String),
    #[error("storage failed: {0}")]
    Store(String),
}

impl AuthError {
    /// Stable machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::Throttled { .. } => "throttled",
            AuthError::Locked { .. } => "locked",
            AuthError::TokenRejected(_) => "token_rejected",
            AuthError::TokenUnavailable => "token_unavailable",
            AuthError::Unauthenticated => "unauthenticated",
            AuthError::SessionExpired => "session_expired",
            AuthError::UserInactive => "user_inactive",
            AuthError::PasswordChanged => "password_changed",
            AuthError::Forbidden => "forbidden",
            AuthError::NoSuchLockout(_) => "not_found",
            AuthError::Store(_) => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidCredentials
            | AuthError::TokenRejected(_)
            | AuthError::Unauthenticated
            | AuthError::SessionExpired
            | AuthError::UserInactive
            | AuthError::PasswordChanged => 401,
            AuthError::Throttled { .. } | AuthError::Locked { .. } => 429,
            AuthError::Forbidden => 403,
            AuthError::NoSuchLockout(_) => 404,
            AuthError::TokenUnavailable => 503,
            AuthError::Store(_) => 500,
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e.to_string())
    }
}

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Password,
    Token,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::Token => "token",
        }
    }
    fn parse(s: &str) -> Method {
        if s == "token" {
            Method::Token
        } else {
            Method::Password
        }
    }
}

/// An authenticated session (never contains the bearer token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub user: UserId,
    /// The first 16 hex digits of the token hash: safe to show and to audit.
    pub id: String,
    pub method: Method,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub client: String,
}

/// A successful login: the bearer token (shown to the client once) and the session.
#[derive(Clone, PartialEq, Eq)]
pub struct NewSession {
    pub token: String,
    pub info: SessionInfo,
    /// A device cookie for password logins: presented at the next login of the same account, it
    /// gives this client its own failure budget (see [`Auth::login_password_on_device`]).
    pub device: Option<String>,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The authentication service. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    audit: Audit,
    access: Access,
    clock: SharedClock,
    cfg: crate::config::Auth,
    tokens: Option<Arc<dyn TokenVerifier>>,
    /// The box's secret for device cookies (HMAC-SHA256), kept in `meta`.
    device_key: ring::hmac::Key,
    /// Accounts and clients with a login in progress: a second concurrent attempt is throttled,
    /// so parallel guessing cannot outrun the delay.
    in_flight: Mutex<HashSet<String>>,
}

/// Removes its keys from the in-flight set when the attempt ends (however it ends).
struct InFlight<'a> {
    set: &'a Mutex<HashSet<String>>,
    keys: Vec<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            set.remove(k);
        }
    }
}

/// The fingerprint of the credential a password session is opened with: a hash of the user's
/// password verifier (which is itself a salted PBKDF2 hash; neither is ever shown). A bundle
/// that changes the password changes it, and that ends the session. Token sessions have none.
fn credential_of(user: &User, method: Method) -> String {
    match (method, user.password.as_deref()) {
        (Method::Password, Some(v)) => {
            let h = crate::util::sha256_hex(format!("session-credential:{v}").as_bytes());
            h[..32].to_string()
        }
        (Method::Password, None) | (Method::Token, _) => String::new(),
    }
}

/// `meta` key of the device-cookie secret.
const DEVICE_KEY_META: &str = "auth.device_cookie_key";
/// Longest device cookie accepted (a nonce, a dot and a MAC, base64url).
const MAX_DEVICE_COOKIE: usize = 128;

/// Length of a bearer token: base64url of 32 bytes.
const TOKEN_CHARS: usize = 43;

/// The key that identifies an attempted account in throttling and the audit log.
pub fn email_key(email: &str) -> String {
    let h = crate::util::sha256_hex(email.trim().to_lowercase().as_bytes());
    format!("email:{}", &h[..16])
}

fn ip_key(client: IpAddr) -> String {
    format!("ip:{client}")
}

impl Auth {
    /// Opens the service (and its device-cookie secret). Decisions are read from `access`'s index.
    pub fn new(
        store: Store,
        audit: Audit,
        access: Access,
        clock: SharedClock,
        cfg: crate::config::Auth,
        tokens: Option<Arc<dyn TokenVerifier>>,
    ) -> Result<Auth, AuthError> {
        let secret = store.with_conn(|c| {
            let tx = c.transaction()?;
            let secret = match Store::meta_get(&tx, DEVICE_KEY_META)?
                .and_then(|s| crate::util_b64::decode(&s).ok())
                .filter(|k| k.len() == 32)
            {
                Some(k) => k,
                None => {
                    let k = crate::util::random_bytes::<32>().to_vec();
                    Store::meta_set(&tx, DEVICE_KEY_META, &crate::util_b64::encode(&k))?;
                    k
                }
            };
            tx.commit()?;
            Ok(secret)
        })?;
        Ok(Auth {
            inner: Arc::new(Inner {
                store,
                audit,
                access,
                clock,
                cfg,
                tokens,
                device_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                in_flight: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The one time this service uses for everything: issuing and checking sessions, throttles,
    /// lockouts and token expiry. It is the authorization index's effective time (never below
    /// the clock floor; the daemon's clock also never goes below its high-water mark), so a
    /// session issued on a clock that lags the floor is not born expired.
    fn now(&self) -> OffsetDateTime {
        self.inner
            .access
            .index()
            .effective_now(self.inner.clock.now())
    }

    fn claim(&self, keys: &[String]) -> Result<InFlight<'_>, AuthError> {
        let mut set = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if keys.iter().any(|k| set.contains(k)) {
            return Err(AuthError::Throttled {
                retry_after: Duration::from_secs(1),
            });
        }
        for k in keys {
            set.insert(k.clone());
        }
        Ok(InFlight {
            set: &self.inner.in_flight,
            keys: keys.to_vec(),
        })
    }

    /// Logs in with email (case-insensitive) and password from `client`, with no device cookie.
    pub async fn login_password(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<NewSession, AuthError> {
        self.login_password_on_device(email, password, client, None)
            .await
    }

    /// The device-cookie throttle key for `cookie`, if it is a cookie this box issued for the
    /// account `acct` (HMAC-SHA256 over the account key and the cookie's nonce, checked in
    /// constant time).
    fn device_throttle_key(&self, acct: &str, cookie: &str) -> Option<String> {
        if cookie.len() > MAX_DEVICE_COOKIE {
            return None;
        }
        let (nonce, tag) = cookie.split_once('.')?;
        let nonce = crate::util_b64::decode(nonce).ok()?;
        let tag = crate::util_b64::decode(tag).ok()?;
        if nonce.len() != 16 {
            return None;
        }
        let mut msg = format!("sitegate-device|{acct}|").into_bytes();
        msg.extend_from_slice(&nonce);
        ring::hmac::verify(&self.inner.device_key, &msg, &tag).ok()?;
        let h = crate::util::sha256_hex(cookie.as_bytes());
        Some(format!("device:{}", &h[..16]))
    }

    /// A new device cookie for the account `acct`.
    fn issue_device_cookie(&self, acct: &str) -> String {
        let nonce = crate::util::random_bytes::<16>();
        let mut msg = format!("sitegate-device|{acct}|").into_bytes();
        msg.extend_from_slice(&nonce);
        let tag = ring::hmac::sign(&self.inner.device_key, &msg);
        format!(
            "{}.{}",
            crate::util_b64::encode(nonce),
            crate::util_b64::encode(tag.as_ref())
        )
    }

    /// Logs in with email (case-insensitive) and password from `client`, presenting the device
    /// cookie of an earlier successful login of this account, if any (OWASP "device cookies").
    ///
    /// Without a valid cookie the attempt is an untrusted client's: it is throttled and can be
    /// locked out per account (and per client address). With a valid cookie the account's
    /// throttle and lockout do not apply: the device has its own failure budget (its own delay
    /// and lockout, under its own key), so someone guessing from elsewhere on the LAN cannot
    /// keep the account's owner out. A successful login returns a fresh cookie.
    pub async fn login_password_on_device(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
        device: Option<&str>,
    ) -> Result<NewSession, AuthError> {
        let email = email.trim().to_lowercase();
        let acct = email_key(&email);
        let ip = ip_key(client);
        let device_key = device.and_then(|d| self.device_throttle_key(&acct, d));
        // The key whose failures are counted (and which may lock): the device's or the account's.
        let budget = device_key.clone().unwrap_or_else(|| acct.clone());
        let keys = vec![budget.clone(), ip.clone()];
        let _guard = match self.claim(&keys) {
            Ok(g) => g,
            Err(e) => {
                self.audit_login(
                    &acct,
                    None,
                    client,
                    Method::Password,
                    "locked",
                    "concurrent",
                )
                .await;
                return Err(e);
            }
        };
        if let Err(e) = self.check_throttle(&keys).await {
            let why = if matches!(e, AuthError::Locked { .. }) {
                "locked"
            } else {
                "throttled"
            };
            self.audit_login(&acct, None, client, Method::Password, "locked", why)
                .await;
            return Err(e);
        }
        // Look the account up in the current index; unknown accounts verify against a dummy so
        // that they cost the same as a wrong password.
        let index = self.inner.access.index();
        let user = index.user_by_email(&email).cloned();
        let typical = index
            .users()
            .find_map(|u| u.password.as_deref().and_then(|p| Verifier::parse(p).ok()))
            .map(|v| v.iterations)
            .unwrap_or(NonZeroU32::new(password::DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN));
        let verifier = user
            .as_ref()
            .and_then(|u| u.password.as_deref())
            .and_then(|p| Verifier::parse(p).ok());
        let real = verifier.is_some();
        // Admins see a known account's email in the lockout list; an unknown attempted email
        // (which might be a mistyped password) is kept only as its hash.
        let label = match (&user, &device_key) {
            (Some(_), Some(_)) => format!("{email} (trusted device)"),
            (Some(_), None) => email.clone(),
            (None, _) => acct.clone(),
        };
        let verifier = verifier.unwrap_or_else(|| Verifier::dummy(typical));
        let pw = password.as_bytes().to_vec();
        let too_long = pw.len() > password::MAX_PASSWORD_BYTES;
        let matched = tokio::task::spawn_blocking(move || !too_long && verifier.verify(&pw))
            .await
            .unwrap_or(false);
        let user = match user {
            Some(u) if real && matched && u.active => u,
            other => {
                let (actor, why) = match &other {
                    None => (acct.clone(), "unknown_account"),
                    Some(u) if !real => (u.id.to_string(), "no_password"),
                    Some(u) if !matched => (u.id.to_string(), "wrong_password"),
                    Some(u) => (u.id.to_string(), "inactive"),
                };
                let locked = self.record_failure(Some((&budget, &label)), &ip).await?;
                let outcome = if locked { "locked" } else { "failed" };
                self.audit_login(&actor, Some(&acct), client, Method::Password, outcome, why)
                    .await;
                return Err(AuthError::InvalidCredentials);
            }
        };
        // A success clears the budget it was judged on; a trusted device's success leaves the
        // account's lockout (from untrusted clients) in place.
        let budget2 = budget.clone();
        self.inner
            .store
            .call(move |c| store::clear_throttle(c, &budget2))
            .await?;
        let mut session = self
            .open_session(
                user.id.clone(),
                Method::Password,
                client,
                None,
                credential_of(&user, Method::Password),
            )
            .await?;
        session.device = Some(self.issue_device_cookie(&acct));
        self.audit_login(
            user.id.as_str(),
            Some(&acct),
            client,
            Method::Password,
            "ok",
            if device_key.is_some() {
                "trusted_device"
            } else {
                ""
            },
        )
        .await;
        Ok(session)
    }

    /// Logs in with a cloud-signed installer token. Its grant joins the index until it expires.
    pub async fn login_token(
        &self,
        envelope: &[u8],
        client: IpAddr,
    ) -> Result<NewSession, AuthError> {
        let ip = ip_key(client);
        let keys = vec![ip.clone()];
        let _guard = self.claim(&keys)?;
        if let Err(e) = self.check_throttle(&keys).await {
            self.audit_login(&ip, None, client, Method::Token, "locked", "throttled")
                .await;
            return Err(e);
        }
        let Some(verifier) = self.inner.tokens.clone() else {
            return Err(AuthError::TokenUnavailable);
        };
        let index = self.inner.access.index();
        let now = index.effective_now(self.now());
        let checked = verifier.verify(envelope).and_then(|(user, grant)| {
            if grant.user != user.id {
                return Err("token grant names another user".to_string());
            }
            if grant.expires_at.is_some_and(|e| now >= e) {
                return Err("token has expired".to_string());
            }
            if grant.not_before.is_some_and(|nb| now < nb) {
                return Err("token is not valid yet".to_string());
            }
            if index.is_revoked(&grant.id)
                || index
                    .grant(&grant.id)
                    .is_some_and(|g| g.origin != Origin::Token)
            {
                return Err("token grant is revoked".to_string());
            }
            if index.user(&user.id).is_some_and(|u| !u.active) {
                return Err("account is deactivated".to_string());
            }
            Ok(())
        });
        // Admitted by the access-state owner: the envelope is kept and the grant is in force
        // when this returns.
        let checked = match checked {
            Ok(()) => {
                let (v, env) = (verifier.clone(), envelope.to_vec());
                tokio::task::spawn_blocking(move || v.admit(&env))
                    .await
                    .unwrap_or_else(|_| Err("token admission failed".to_string()))
            }
            Err(why) => Err(why),
        };
        let (user, grant) = match checked {
            Ok(ug) => ug,
            Err(why) => {
                self.record_failure(None, &ip).await?;
                let detail = json!({"method": "token", "client": client.to_string(), "reason": "token_rejected", "message": why});
                let _ = self
                    .inner
                    .audit
                    .record(
                        Event::new("login", "failed")
                            .actor(ip.clone())
                            .detail(detail),
                    )
                    .await;
                return Err(AuthError::TokenRejected(why));
            }
        };
        let session = self
            .open_session(
                user.id.clone(),
                Method::Token,
                client,
                grant.expires_at,
                String::new(),
            )
            .await?;
        let detail = json!({"method": "token", "client": client.to_string(), "grant": grant.id.as_str(), "session": session.info.id});
        let _ = self
            .inner
            .audit
            .record(
                Event::new("login", "ok")
                    .actor(user.id.to_string())
                    .detail(detail),
            )
            .await;
        Ok(session)
    }

    async fn open_session(
        &self,
        user: UserId,
        method: Method,
        client: IpAddr,
        cap: Option<OffsetDateTime>,
        credential: String,
    ) -> Result<NewSession, AuthError> {
        let now = self.now();
        let ttl = time::Duration::try_from(self.inner.cfg.session_ttl)
            .unwrap_or(time::Duration::hours(12));
        let mut expires = now + ttl;
        if let Some(c) = cap {
            expires = expires.min(c);
        }
        let token = crate::util_b64::encode(crate::util::random_bytes::<32>());
        let hash = crate::util::sha256_hex(token.as_bytes());
        let info = SessionInfo {
            user,
            id: hash[..16].to_string(),
            method,
            created: now,
            expires,
            client: client.to_string(),
        };
        let i2 = info.clone();
        self.inner
            .store
            .call(move |c| store::insert_session(c, &hash, &i2, &credential))
            .await?;
        Ok(NewSession {
            token,
            info,
            device: None,
        })
    }

    /// Checks a bearer token. Called on every request; authorization is decided afterwards
    /// against the current index.
    pub async fn authenticate(&self, bearer: &str) -> Result<SessionInfo, AuthError> {
        let bearer = bearer.trim();
        let decoded = crate::util_b64::decode(bearer).ok();
        if bearer.len() != TOKEN_CHARS || decoded.is_none_or(|d| d.len() != 32) {
            return Err(AuthError::Unauthenticated);
        }
        let hash = crate::util::sha256_hex(bearer.as_bytes());
        // Judged on the same clock floor as grants: setting the clock back extends nothing.
        let index = self.inner.access.index();
        let now = index.effective_now(self.now());
        let h2 = hash.clone();
        let row = self
            .inner
            .store
            .call(move |c| {
                Ok(store::get_session(c, &h2)?.map(|r| (r, store::session_credential(c, &h2))))
            })
            .await?;
        let Some(((stored_hash, info, last_seen), credential)) = row else {
            return Err(AuthError::Unauthenticated);
        };
        // The lookup was by hash; compare again in constant time so no branch depends on how
        // much of a guessed token matched.
        if !bool::from(stored_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(AuthError::Unauthenticated);
        }
        if now >= info.expires {
            let h2 = hash.clone();
            self.inner
                .store
                .call(move |c| store::delete_session(c, &h2))
                .await?;
            return Err(AuthError::SessionExpired);
        }
        let ended = match index.user(&info.user) {
            // A bundle changed the password since the session was opened.
            Some(u)
                if u.active
                    && info.method == Method::Password
                    && !bool::from(
                        credential_of(u, Method::Password)
                            .as_bytes()
                            .ct_eq(credential?.as_bytes()),
                    ) =>
            {
                Some(AuthError::PasswordChanged)
            }
            Some(u) if u.active => None,
            // Deactivated or removed: the session ends now.
            _ => Some(AuthError::UserInactive),
        };
        if let Some(why) = ended {
            self.end_sessions(vec![(hash.clone(), info.clone())], why.code())
                .await?;
            return Err(why);
        }
        if now - last_seen > time::Duration::seconds(30) {
            self.inner
                .store
                .call(move |c| store::touch_session(c, &hash, now))
                .await?;
        }
        Ok(info)
    }

    /// Ends the session of `bearer`, even if it has already expired. `Unauthenticated` if there
    /// is no such session.
    pub async fn logout(&self, bearer: &str) -> Result<(), AuthError> {
        let bearer = bearer.trim();
        if bearer.len() != TOKEN_CHARS {
            return Err(AuthError::Unauthenticated);
        }
        let hash = crate::util::sha256_hex(bearer.as_bytes());
        let audit = self.inner.audit.clone();
        let ended = self
            .inner
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let Some((_, info, _)) = store::get_session(&tx, &hash)? else {
                    return Ok(false);
                };
                store::delete_session(&tx, &hash)?;
                let ev = Event::new("logout", "ok")
                    .actor(info.user.to_string())
                    .detail(json!({"session": info.id}));
                audit.record_in(&tx, &ev)?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if ended {
            Ok(())
        } else {
            Err(AuthError::Unauthenticated)
        }
    }

    /// Ends every session of `user` (e.g. after a password change).
    pub async fn logout_user(&self, user: &UserId) -> Result<usize, AuthError> {
        let u = user.to_string();
        Ok(self
            .inner
            .store
            .call(move |c| Ok(c.execute("DELETE FROM sessions WHERE user = ?1", [u])?))
            .await?)
    }

    /// Sessions of `user` (for `GET /me` and admins).
    pub async fn sessions_of(&self, user: &UserId) -> Result<Vec<SessionInfo>, AuthError> {
        let u = user.to_string();
        Ok(self
            .inner
            .store
            .call(move |c| store::sessions_of(c, &u))
            .await?)
    }

    /// Current lockouts and throttles; only for site admins and the site owner (see
    /// [`Auth::require_lockout_admin`]).
    pub async fn lockouts(&self, actor: &UserId) -> Result<Vec<Lockout>, AuthError> {
        self.require_lockout_admin(actor)?;
        let now = self.now();
        Ok(self
            .inner
            .store
            .call(move |c| store::lockouts(c, now))
            .await?)
    }

    /// Clears one lockout (by its key from [`Auth::lockouts`]); audited. Same rule as listing.
    pub async fn clear_lockout(&self, actor: &UserId, key: &str) -> Result<(), AuthError> {
        self.require_lockout_admin(actor)?;
        let key = key.to_string();
        let audit = self.inner.audit.clone();
        let ev = Event::new("lockout_cleared", "ok")
            .actor(actor.to_string())
            .detail(json!({"key": key}));
        let cleared = self
            .inner
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let n = store::clear_throttle(&tx, &key)?;
                if n > 0 {
                    audit.record_in(&tx, &ev)?;
                }
                tx.commit()?;
                Ok((n, key))
            })
            .await?;
        match cleared {
            (0, key) => Err(AuthError::NoSuchLockout(key)),
            _ => Ok(()),
        }
    }

    /// Ends sessions (deletes them) with one `session_ended` audit record per session, carrying
    /// `reason` (`user_inactive`, `password_changed`).
    async fn end_sessions(
        &self,
        sessions: Vec<(String, SessionInfo)>,
        reason: &'static str,
    ) -> Result<(), AuthError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let audit = self.inner.audit.clone();
        self.inner
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                for (hash, info) in &sessions {
                    store::delete_session(&tx, hash)?;
                    let ev = Event::new("session_ended", "ok")
                        .actor(info.user.to_string())
                        .detail(json!({"session": info.id, "method": info.method.as_str(), "reason": reason}));
                    audit.record_in(&tx, &ev)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Ends every session whose user a bundle deactivated or removed, or whose password it
    /// changed (each audited as `session_ended`). [`Auth::authenticate`] refuses such a session
    /// on its next use anyway; this also removes the ones nobody uses. Called by
    /// [`Auth::prune`] and after every new access state.
    pub async fn end_changed_sessions(&self) -> Result<usize, AuthError> {
        let all = self.inner.store.call(|c| store::all_sessions(c)).await?;
        let index = self.inner.access.index();
        let mut inactive = Vec::new();
        let mut changed = Vec::new();
        for (hash, user, method, credential) in all {
            let Ok(uid) = UserId::new(user) else { continue };
            let info = SessionInfo {
                user: uid.clone(),
                id: hash.chars().take(16).collect(),
                method,
                created: OffsetDateTime::UNIX_EPOCH,
                expires: OffsetDateTime::UNIX_EPOCH,
                client: String::new(),
            };
            match index.user(&uid) {
                Some(u) if u.active => {
                    if method == Method::Password
                        && !bool::from(
                            credential_of(u, Method::Password)
                                .as_bytes()
                                .ct_eq(credential.as_bytes()),
                        )
                    {
                        changed.push((hash, info));
                    }
                }
                _ => inactive.push((hash, info)),
            }
        }
        let n = inactive.len() + changed.len();
        self.end_sessions(inactive, "user_inactive").await?;
        self.end_sessions(changed, "password_changed").await?;
        Ok(n)
    }

    /// Deletes expired sessions and ends the ones a new access state invalidated (call
    /// periodically). Expired installer tokens grant nothing (the index judges their expiry);
    /// the grants engine prunes their rows.
    pub async fn prune(&self) -> Result<(), AuthError> {
        self.end_changed_sessions().await?;
        let now = self.now();
        self.inner
            .store
            .call(move |c| {
                c.execute(
                    "DELETE FROM sessions WHERE expires_ms <= ?1",
                    [crate::clock::unix_ms(now)],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Listing and clearing sign-in lockouts lifts a brute-force protection: it needs the `admin`
    /// role on the site (with `manage_users` in the package), or the site owner. A technician,
    /// who holds `manage_users` too, is refused.
    fn require_lockout_admin(&self, actor: &UserId) -> Result<(), AuthError> {
        let index = self.inner.access.index();
        if index.is_owner(actor) {
            return Ok(());
        }
        let now = self.now();
        let admin = matches!(
            index.effective_caps(actor, &Target::Site, now),
            Ok((crate::model::Role::Admin, _))
        );
        if admin
            && index
                .decide(actor, Capability::ManageUsers, &Target::Site, now)
                .is_allow()
        {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }

    async fn check_throttle(&self, keys: &[String]) -> Result<(), AuthError> {
        let now = self.now();
        let keys = keys.to_vec();
        self.inner
            .store
            .call(move |c| store::check_throttle(c, &keys, now))
            .await?
    }

    /// Counts a failure for the account (may lock it) and the client; `true` if now locked.
    async fn record_failure(
        &self,
        account: Option<(&str, &str)>,
        ip: &str,
    ) -> Result<bool, AuthError> {
        let now = self.now();
        let cfg = self.inner.cfg.clone();
        let account = account.map(|(k, l)| (k.to_string(), l.to_string()));
        let ip = ip.to_string();
        Ok(self
            .inner
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let locked = match &account {
                    Some((key, label)) => store::fail(&tx, key, label, now, &cfg, true)?,
                    None => false,
                };
                store::fail(&tx, &ip, &ip, now, &cfg, false)?;
                tx.commit()?;
                Ok(locked)
            })
            .await?)
    }

    async fn audit_login(
        &self,
        actor: &str,
        account: Option<&str>,
        client: IpAddr,
        method: Method,
        outcome: &'static str,
        reason: &str,
    ) {
        let mut detail = json!({"method": method.as_str(), "client": client.to_string()});
        if !reason.is_empty() {
            detail["reason"] = json!(reason);
        }
        if let Some(a) = account {
            detail["account"] = json!(a);
        }
        let _ = self
            .inner
            .audit
            .record(Event::new("login", outcome).actor(actor).detail(detail))
            .await;
    }
}

#[cfg(test)]
mod tests;
