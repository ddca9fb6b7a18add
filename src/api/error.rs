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

/// One error answer a route may give: its status and its code.
pub type Answer = (u16, &'static str);

/// What the layers around every route may answer: a body that cannot be read or is over the
/// limit (whatever the method), the rate limit, the request timeout.
pub const EVERY_ROUTE: &[Answer] = &[
    (400, "unreadable_body"),
    (413, "payload_too_large"),
    (429, "rate_limited"),
    (504, "request_timeout"),
];
/// Answers about a path rather than an operation: no such route, a method the path does not
/// take, a refused CORS preflight.
pub const NO_OPERATION: &[Answer] = &[
    (404, "not_found"),
    (405, "method_not_allowed"),
    (403, "forbidden"),
];
/// An authenticated caller (`extract::Caller`): no, a malformed or an unknown token, an expired
/// session, a store failure.
pub const CALLER: &[Answer] = &[
    (401, "unauthenticated"),
    (401, "session_expired"),
    (500, "internal"),
];
/// A cookie-authenticated request that changes something, without the CSRF token or from
/// another origin.
pub const CSRF: &[Answer] = &[(403, "csrf_failed")];
/// A JSON body (`extract::ApiJson`); its size and readability are [`EVERY_ROUTE`]'s.
pub const JSON_BODY: &[Answer] = &[
    (400, "malformed_json"),
    (400, "invalid_body"),
    (415, "unsupported_media_type"),
];
/// A query string (`extract::ApiQuery`).
pub const QUERY: &[Answer] = &[(400, "invalid_query")];
/// Path parameters (`extract::ApiPath`): a segment that is not UTF-8 once decoded.
pub const PATH: &[Answer] = &[(404, "not_found")];
/// Every answer of `From<AuthError>` a login can give.
pub const LOGIN: &[Answer] = &[
    (401, "invalid_credentials"),
    (401, "unauthenticated"),
    (429, "login_throttled"),
    (500, "internal"),
];
/// The image of `From<AuthError>` for lockout management.
pub const LOCKOUT_ERRORS: &[Answer] = &[
    (403, "forbidden"),
    (404, "lockout_not_found"),
    (500, "internal"),
];
/// The image of `From<ReadError>` (and of [`ApiError::device_timeout`]).
pub const READ_ERRORS: &[Answer] = &[
    (404, "unit_not_found"),
    (422, "device_refused"),
    (502, "device_error"),
    (504, "device_timeout"),
];
/// The image of `From<WriteFailure>`.
pub const WRITE_ERRORS: &[Answer] = &[
    (404, "command_not_found"),
    (404, "point_not_found"),
    (409, "command_not_supported"),
    (409, "not_possible_in_mode"),
    (422, "invalid_value"),
    (502, "device_error"),
    (502, "readback_mismatch"),
    (503, "link_busy"),
    (504, "device_timeout"),
];
/// The image of `From<DelegationError>`.
pub const DELEGATION_ERRORS: &[Answer] = &[
    (403, "above_ceiling"),
    (403, "above_own_role"),
    (403, "forbidden"),
    (403, "not_cloud_grant"),
    (404, "grant_not_found"),
    (409, "conflict"),
    (422, "circular_delegation"),
    (422, "expiry_invalid"),
    (422, "expiry_required"),
    (422, "expiry_too_late"),
    (422, "none_not_delegable"),
    (422, "note_too_long"),
    (422, "unknown_user"),
    (500, "internal"),
];
/// The image of `From<BusinessError>`.
pub const BUSINESS_ERRORS: &[Answer] = &[
    (403, "forbidden"),
    (404, "business_not_found"),
    (404, "not_suspended"),
    (422, "note_too_long"),
    (500, "internal"),
];

/// The image of `From<EditError>` for a change of the config file (the file cannot be read or
/// written is `config_unavailable`).
pub const CONFIG_EDIT_ERRORS: &[Answer] = &[
    (403, "forbidden"),
    (422, "config_invalid"),
    (503, "config_unavailable"),
];
/// The config file cannot be read (the listings of `/config/…`).
pub const CONFIG_READ_ERRORS: &[Answer] = &[(403, "forbidden"), (503, "config_unavailable")];

/// The code of an error response, kept on the response so that the route's guard can compare it
/// with what the route declares.
#[derive(Debug, Clone, Copy)]
pub struct Code(pub &'static str);

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

/// Commissioning changes of the config file. An invalid result names every problem with its key
/// path, as `check-config` prints them; a file that cannot be read or written is logged with its
/// detail and answered without it.
impl From<crate::config_edit::EditError> for ApiError {
    fn from(e: crate::config_edit::EditError) -> Self {
        use crate::config_edit::EditError;
        match e {
            EditError::Invalid(problems) => {
                const SHOWN: usize = 10;
                let mut lines: Vec<String> = problems
                    .iter()
                    .take(SHOWN)
                    .map(|p| safe(&p.to_string()))
                    .collect();
                if problems.len() > SHOWN {
                    lines.push(format!("and {} more", problems.len() - SHOWN));
                }
                Self::unprocessable(
                    "config_invalid",
                    format!(
                        "the change would make the config invalid: {}",
                        lines.join("; ")
                    ),
                )
            }
            EditError::LinkNotFound(l) => Self::not_found(
                "link_not_found",
                format!("no link named `{}` in the config", safe(&l)),
            ),
            EditError::UnitNotFound(_) => Self::unit_not_found(),
            EditError::LinkInUse { .. } => {
                Self::new(StatusCode::CONFLICT, "link_in_use", safe(&e.to_string()))
            }
            EditError::Unavailable(detail) => {
                tracing::error!(error = %detail, "the config file cannot be edited");
                Self::config_unavailable()
            }
        }
    }
}

impl ApiError {
    /// The config file cannot be read or written, or the daemon was not started from one.
    pub fn config_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "config_unavailable",
            "the config file cannot be read or changed now (see the service log, or run \
             `sitegate check-config`)",
        )
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
        resp.extensions_mut().insert(Code(self.code));
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
    use std::collections::BTreeSet;

    fn image(errors: impl IntoIterator<Item = ApiError>) -> BTreeSet<Answer> {
        errors
            .into_iter()
            .map(|e| (e.status.as_u16(), e.code))
            .collect()
    }

    fn set(answers: &[Answer]) -> BTreeSet<Answer> {
        answers.iter().copied().collect()
    }

    #[test]
    fn each_declared_error_set_is_exactly_the_image_of_its_mapping() {
        use crate::business::BusinessError as B;
        use crate::delegation::DelegationError as D;
        let s = String::new;
        // Every variant; the matches fail to compile when one is added, so its answer is
        // declared (and documented) too.
        let auth = [
            AuthError::InvalidCredentials,
            AuthError::Throttled {
                retry_after: Duration::ZERO,
            },
            AuthError::Locked {
                retry_after: Duration::ZERO,
            },
            AuthError::TokenRejected(s()),
            AuthError::TokenUnavailable,
            AuthError::Unauthenticated,
            AuthError::SessionExpired,
            AuthError::UserInactive,
            AuthError::PasswordChanged,
            AuthError::Forbidden,
            AuthError::NoSuchLockout(s()),
            AuthError::Store(s()),
        ];
        for e in &auth {
            match e {
                AuthError::InvalidCredentials
                | AuthError::Throttled { .. }
                | AuthError::Locked { .. }
                | AuthError::TokenRejected(_)
                | AuthError::TokenUnavailable
                | AuthError::Unauthenticated
                | AuthError::SessionExpired
                | AuthError::UserInactive
                | AuthError::PasswordChanged
                | AuthError::Forbidden
                | AuthError::NoSuchLockout(_)
                | AuthError::Store(_) => {}
            }
        }
        let all_auth = image(auth.iter().cloned().map(ApiError::from));
        let declared: BTreeSet<Answer> = [CALLER, LOGIN, LOCKOUT_ERRORS]
            .into_iter()
            .flat_map(set)
            .collect();
        assert_eq!(all_auth, declared, "From<AuthError>");

        let read = [
            ReadError::UnknownUnit,
            ReadError::Timeout,
            ReadError::Refused(s()),
            ReadError::Exception(s()),
            ReadError::Transport(s()),
        ];
        for e in &read {
            match e {
                ReadError::UnknownUnit
                | ReadError::Timeout
                | ReadError::Refused(_)
                | ReadError::Exception(_)
                | ReadError::Transport(_) => {}
            }
        }
        assert_eq!(
            image(read.into_iter().map(ApiError::from)),
            set(READ_ERRORS)
        );

        let write = [
            WriteFailure::Validation(s()),
            WriteFailure::UnknownPoint,
            WriteFailure::UnknownCommand,
            WriteFailure::Timeout,
            WriteFailure::Mismatch(s()),
            WriteFailure::Exception(s()),
            WriteFailure::Transport(s()),
            WriteFailure::Busy(s()),
            WriteFailure::NotSupported(s()),
            WriteFailure::NotPossible(s()),
        ];
        for e in &write {
            match e {
                WriteFailure::Validation(_)
                | WriteFailure::UnknownPoint
                | WriteFailure::UnknownCommand
                | WriteFailure::Timeout
                | WriteFailure::Mismatch(_)
                | WriteFailure::Exception(_)
                | WriteFailure::Transport(_)
                | WriteFailure::Busy(_)
                | WriteFailure::NotSupported(_)
                | WriteFailure::NotPossible(_) => {}
            }
        }
        assert_eq!(
            image(write.into_iter().map(ApiError::from)),
            set(WRITE_ERRORS)
        );

        use crate::authz::DenyReason;
        use crate::model::{Role, UnitId};
        let unit = UnitId::new("u").unwrap();
        let deleg = [
            D::Forbidden {
                scope: s(),
                reason: DenyReason::NoGrant,
            },
            D::NoneNotDelegable,
            D::AboveCeiling {
                requested: Role::Admin,
                ceiling: Role::Viewer,
            },
            D::AboveOwnRole {
                requested: Role::Admin,
                unit,
            },
            D::UnknownUser(s()),
            D::CircularDelegation(s()),
            D::ExpiryRequired(s()),
            D::ExpiryTooLate(s()),
            D::ExpiryInvalid,
            D::NotCloudGrant,
            D::NotFound(s()),
            D::NoteTooLong,
            D::TooManyRequests,
            D::Key(s()),
            D::Store(s()),
        ];
        for e in &deleg {
            match e {
                D::Forbidden { .. }
                | D::NoneNotDelegable
                | D::AboveCeiling { .. }
                | D::AboveOwnRole { .. }
                | D::UnknownUser(_)
                | D::CircularDelegation(_)
                | D::ExpiryRequired(_)
                | D::ExpiryTooLate(_)
                | D::ExpiryInvalid
                | D::NotCloudGrant
                | D::NotFound(_)
                | D::NoteTooLong
                | D::TooManyRequests
                | D::Key(_)
                | D::Store(_) => {}
            }
        }
        assert_eq!(
            image(deleg.into_iter().map(ApiError::from)),
            set(DELEGATION_ERRORS)
        );

        let business = [
            B::NotOwner { reason: "x" },
            B::UnknownBusiness,
            B::NotSuspended,
            B::NoteTooLong,
            B::Store(s()),
        ];
        for e in &business {
            match e {
                B::NotOwner { .. }
                | B::UnknownBusiness
                | B::NotSuspended
                | B::NoteTooLong
                | B::Store(_) => {}
            }
        }
        assert_eq!(
            image(business.into_iter().map(ApiError::from)),
            set(BUSINESS_ERRORS)
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let r = ApiError::rate_limited(Duration::from_millis(1200)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::rate_limited(Duration::from_millis(10)).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
