//! The API's error contract: every failure is a JSON body `{"error":"<code>","message":"…"}` with
//! a stable machine-readable code and a safe human message.
//!
//! Messages never carry internal paths, SQL, Rust type names or stack traces; details go to
//! tracing. The codes are part of the API (documented in `docs/openapi.json`): never rename one.
//!
//! Each engine error is turned into an [`ApiError`] here and nowhere else: one `From` per error
//! type, one arm per variant, naming the status and code the API documents. Handlers only add
//! side effects (audit records, denial metrics) around `?`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ports::{AuthError, DelegationError, ReadError, WriteFailure};
use crate::business::{BusinessError, MAX_NOTE_CHARS};

/// An API failure: status, stable code, safe message, and optionally a `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid session token is required (Authorization: Bearer …)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The one answer for a unit that does not exist AND for a unit outside the caller's scope,
    /// so scope cannot be probed.
    pub fn unit_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "unit_not_found", "no such unit")
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn rate_limited(after: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; slow down",
        )
        .with_retry_after(after)
    }

    pub fn timeout(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the box's log",
        )
    }

    /// The one answer for a malformed, unknown or foreign grant id.
    pub fn grant_not_found() -> Self {
        Self::not_found("grant_not_found", "no such grant")
    }

    /// The unit failed in a way that is not about the request (an exception, a link error).
    pub fn device_error(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "device_error",
            format!("the unit reported an error: {}", safe(detail)),
        )
    }

    /// A device read that did not finish within the API's bound.
    pub fn device_timeout(limit: Duration) -> Self {
        Self::timeout(
            "device_timeout",
            format!("the unit did not answer within {} ms", limit.as_millis()),
        )
    }
}

/// Sessions, logins and lockouts. A login answers every refusal alike (`invalid_credentials`),
/// and throttling alike with lockout, so nothing confirms that an account exists.
impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials | AuthError::TokenRejected(_) => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "email, password or token not accepted",
            ),
            AuthError::Throttled { retry_after } | AuthError::Locked { retry_after } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "login_throttled",
                "too many failed logins; retry later",
            )
            .with_retry_after(retry_after),
            AuthError::Unauthenticated | AuthError::UserInactive | AuthError::PasswordChanged => {
                Self::unauthenticated()
            }
            AuthError::SessionExpired => Self::new(
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "the session has expired; log in again",
            ),
            AuthError::Forbidden => Self::forbidden(
                "managing lockouts needs the admin role on the whole site (or the site owner)",
            ),
            AuthError::NoSuchLockout(_) => Self::not_found("lockout_not_found", "no such lockout"),
            // Details are logged by the engine.
            AuthError::TokenUnavailable | AuthError::Store(_) => Self::internal(),
        }
    }
}

/// Interactive reads (`?fresh=true`, raw diagnostic reads).
impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::UnknownUnit => Self::unit_not_found(),
            ReadError::Timeout => {
                Self::timeout("device_timeout", "the unit did not answer in time")
            }
            // The client chose the registers: a device refusing them (an address it does not
            // have) is an answer about the request, not a failing device.
            ReadError::Refused(m) => Self::unprocessable(
                "device_refused",
                format!("the unit refused the read: {}", safe(&m)),
            ),
            ReadError::Exception(_) | ReadError::Transport(_) => Self::device_error(&e.to_string()),
        }
    }
}

/// Point writes and commands.
impl From<WriteFailure> for ApiError {
    fn from(e: WriteFailure) -> Self {
        match e {
            WriteFailure::Validation(m) => Self::unprocessable("invalid_value", safe(&m)),
            WriteFailure::UnknownPoint => Self::not_found("point_not_found", "no such point"),
            WriteFailure::UnknownCommand => Self::not_found("command_not_found", "no such command"),
            WriteFailure::Timeout => {
                Self::timeout("device_timeout", "the unit did not answer in time")
            }
            WriteFailure::Mismatch(m) => Self::new(
                StatusCode::BAD_GATEWAY,
                "readback_mismatch",
                format!("the unit did not keep the value: {}", safe(&m)),
            ),
            WriteFailure::Exception(m) | WriteFailure::Transport(m) => Self::device_error(&m),
            WriteFailure::Busy(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "link_busy",
                format!("{}; nothing was sent to the unit", safe(&m)),
            )
            .with_retry_after(Duration::from_secs(1)),
            WriteFailure::NotSupported(m) => {
                Self::new(StatusCode::CONFLICT, "command_not_supported", safe(&m))
            }
            WriteFailure::NotPossible(m) => {
                Self::new(StatusCode::CONFLICT, "not_possible_in_mode", safe(&m))
            }
        }
    }
}

/// Local grants and access requests. A scope outside the site is refused by the engine as
/// `Forbidden`, so it answers exactly like a scope the caller may not manage.
impl From<DelegationError> for ApiError {
    fn from(e: DelegationError) -> Self {
        use DelegationError as D;
        let forbidden = |message: &str| Self::new(StatusCode::FORBIDDEN, e.code(), message);
        match &e {
            D::Forbidden { .. } => forbidden("you may not manage access on this scope"),
            D::AboveCeiling { .. } => forbidden("the role is above what your role may delegate"),
            D::AboveOwnRole { .. } => forbidden("the role is above your own on part of the scope"),
            D::NotCloudGrant => forbidden(
                "on a site managed by a service provider only cloud-issued access may delegate",
            ),
            D::NotFound(_) => Self::grant_not_found(),
            D::TooManyRequests => Self::new(StatusCode::CONFLICT, "conflict", safe(&e.to_string())),
            D::UnknownUser(_)
            | D::NoneNotDelegable
            | D::CircularDelegation(_)
            | D::ExpiryRequired(_)
            | D::ExpiryTooLate(_)
            | D::ExpiryInvalid
            | D::NoteTooLong => Self::unprocessable(e.code(), safe(&e.to_string())),
            // Details are logged by the engine.
            D::Key(_) | D::Store(_) => Self::internal(),
        }
    }
}

/// The site owner's control over service businesses.
impl From<BusinessError> for ApiError {
    fn from(e: BusinessError) -> Self {
        match e {
            BusinessError::NotOwner { .. } => {
                Self::forbidden("only the site owner may manage service businesses")
            }
            BusinessError::UnknownBusiness => {
                Self::not_found("business_not_found", "no user of this site belongs to it")
            }
            BusinessError::NotSuspended => {
                Self::not_found("not_suspended", "the business is not suspended")
            }
            BusinessError::NoteTooLong => Self::unprocessable(
                "note_too_long",
                format!("`note` is longer than {MAX_NOTE_CHARS} characters"),
            ),
            BusinessError::Store(_) => Self::internal(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(Body {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up, at least 1.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sitegate\""),
            );
        }
        resp
    }
}

/// Bounds a message that may echo client input: one line, at most 200 characters.
pub fn safe(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let r = ApiError::rate_limited(Duration::from_millis(1200)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::rate_limited(Duration::from_millis(10)).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
