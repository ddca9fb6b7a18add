//! The engines behind the LAN API's ports: each adapter implements one `api::ports` trait over
//! the real engine (`auth`, `authz`, `delegation`, `modbus`, `grants`). Mapping only: no policy
//! is decided here.

use std::net::IpAddr;
use std::sync::Arc;

use crate::access::Origin;
use crate::api::ports::{
    self, AccessRequest, AuthPort, AuthzPort, BoxFut, DelegateRequest, DelegationOutcome,
    DelegationPort, GrantInfo, LoginError, Me, SessionInfo,
};
use crate::auth::{self, Auth};
use crate::authz::{Authz, Decision, Target};
use crate::clock::SharedClock;
use crate::delegation::{self, DelegationRequest, Delegations};
use crate::model::{CapSet, Capability, GrantId, UnitId, UserId};

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// [`AuthPort`] over [`Auth`].
pub struct AuthAdapter(pub Auth);

fn login_error(e: auth::AuthError) -> LoginError {
    match e {
        auth::AuthError::Throttled { retry_after } => LoginError::Throttled { retry_after },
        auth::AuthError::Locked { retry_after } => LoginError::Locked { retry_after },
        auth::AuthError::Store(_) | auth::AuthError::TokenUnavailable => LoginError::Unavailable,
        auth::AuthError::InvalidCredentials
        | auth::AuthError::TokenRejected(_)
        | auth::AuthError::Unauthenticated
        | auth::AuthError::SessionExpired
        | auth::AuthError::UserInactive
        | auth::AuthError::Forbidden
        | auth::AuthError::NoSuchLockout(_) => LoginError::Invalid,
    }
}

fn session_error(e: auth::AuthError) -> ports::AuthError {
    match e {
        auth::AuthError::SessionExpired => ports::AuthError::Expired,
        auth::AuthError::Store(_) => ports::AuthError::Unavailable,
        _ => ports::AuthError::Invalid,
    }
}

fn session(new: auth::NewSession) -> (String, SessionInfo) {
    (
        new.token,
        SessionInfo {
            user: new.info.user,
            expires_at: new.info.expires,
        },
    )
}

impl AuthPort for AuthAdapter {
    fn login_password<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
        client_ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), LoginError>> {
        Box::pin(async move {
            self.0
                .login_password(email, password, client_ip)
                .await
                .map(session)
                .map_err(login_error)
        })
    }

    fn login_token<'a>(
        &'a self,
        envelope: &'a [u8],
        client_ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), LoginError>> {
        Box::pin(async move {
            self.0
                .login_token(envelope, client_ip)
                .await
                .map(session)
                .map_err(login_error)
        })
    }

    fn authenticate<'a>(
        &'a self,
        bearer: &'a str,
    ) -> BoxFut<'a, Result<SessionInfo, ports::AuthError>> {
        Box::pin(async move {
            self.0
                .authenticate(bearer)
                .await
                .map(|s| SessionInfo {
                    user: s.user,
                    expires_at: s.expires,
                })
                .map_err(session_error)
        })
    }

    fn logout<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<(), ports::AuthError>> {
        Box::pin(async move { self.0.logout(bearer).await.map_err(session_error) })
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

/// [`AuthzPort`] over the current [`Authz`] index, judged at the injected clock.
pub struct AuthzAdapter {
    pub authz: Arc<Authz>,
    pub clock: SharedClock,
}

fn origin_str(o: &Origin) -> &'static str {
    match o {
        Origin::Cloud => "cloud",
        Origin::Local { .. } => "local",
        Origin::Token => "token",
    }
}

/// A grant as the API shows it.
pub fn grant_info(g: &crate::access::Grant, email: Option<String>) -> GrantInfo {
    GrantInfo {
        id: g.id.clone(),
        user: g.user.clone(),
        email,
        role: g.role,
        scope: g.scope.clone(),
        not_before: g.not_before,
        expires_at: g.expires_at,
        origin: origin_str(&g.origin),
        delegator: match &g.origin {
            Origin::Local { delegator, .. } => Some(delegator.clone()),
            Origin::Cloud | Origin::Token => None,
        },
    }
}

impl AuthzPort for AuthzAdapter {
    fn decide(
        &self,
        user: &UserId,
        capability: Capability,
        target: &ports::Target,
    ) -> ports::Decision {
        let target = match target {
            ports::Target::Site => Target::Site,
            ports::Target::Unit(u) => Target::Unit(u.clone()),
        };
        match self
            .authz
            .index()
            .decide(user, capability, &target, self.clock.now())
        {
            Decision::Allow => ports::Decision::Allow,
            Decision::Deny(why) => ports::Decision::Deny(why.code()),
        }
    }

    fn visible_units(&self, user: &UserId) -> Vec<(UnitId, CapSet)> {
        self.authz
            .index()
            .visible_units(user, self.clock.now())
            .into_iter()
            .map(|v| (v.unit, v.caps))
            .collect()
    }

    fn me(&self, user: &UserId) -> Option<Me> {
        let ix = self.authz.index();
        let now = self.clock.now();
        let u = ix.user(user).filter(|u| u.active)?;
        let site = ix
            .effective_caps(user, &Target::Site, now)
            .map(|(_, c)| c.effective)
            .unwrap_or(CapSet::EMPTY);
        let units = ix
            .visible_units(user, now)
            .into_iter()
            .map(|v| (v.unit, v.caps))
            .collect();
        let eff = ix.effective_now(now);
        let grants = ix
            .grants_of(user)
            .filter(|g| {
                !ix.is_revoked(&g.id)
                    && g.not_before.is_none_or(|nb| nb <= eff)
                    && g.expires_at.is_none_or(|e| e > eff)
            })
            .map(|g| grant_info(g, Some(u.email.clone())))
            .collect();
        Some(Me {
            user: u.id.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            site,
            units,
            grants,
            management: (ix.seq() > 0).then(|| ix.management()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------------------------

/// [`DelegationPort`] over [`Delegations`].
pub struct DelegationAdapter {
    pub delegations: Delegations,
    pub authz: Arc<Authz>,
}

fn delegation_error(e: delegation::DelegationError) -> ports::DelegationError {
    use delegation::DelegationError as D;
    match e {
        D::Forbidden { .. }
        | D::AboveCeiling { .. }
        | D::AboveOwnRole { .. }
        | D::NotCloudGrant => ports::DelegationError::Forbidden(e.code()),
        D::UnknownScope(_) | D::NotFound(_) => ports::DelegationError::NotFound,
        D::TooManyRequests => ports::DelegationError::Conflict(e.to_string()),
        D::UnknownUser(_)
        | D::CircularDelegation(_)
        | D::ExpiryRequired(_)
        | D::ExpiryTooLate(_)
        | D::ExpiryInvalid
        | D::NoteTooLong => ports::DelegationError::Invalid(e.to_string()),
        D::Key(_) | D::Store(_) => ports::DelegationError::Unavailable,
    }
}

fn local_info(g: &delegation::LocalGrant, email: Option<String>) -> GrantInfo {
    grant_info(&g.to_grant(), email)
}

impl DelegationPort for DelegationAdapter {
    fn list<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<GrantInfo>, ports::DelegationError>> {
        Box::pin(async move {
            let listing = self
                .delegations
                .list(actor)
                .await
                .map_err(delegation_error)?;
            let ix = self.authz.index();
            Ok(listing
                .grants
                .iter()
                .filter(|g| g.revoked_at.is_none())
                .map(|g| local_info(g, ix.user(&g.user).map(|u| u.email.clone())))
                .collect())
        })
    }

    fn create<'a>(
        &'a self,
        actor: &'a UserId,
        request: DelegateRequest,
    ) -> BoxFut<'a, Result<DelegationOutcome, ports::DelegationError>> {
        Box::pin(async move {
            // Delegation names an existing user of the site (from the cloud's bundle); accounts
            // are created by the cloud, so a password in the request is refused, not ignored.
            if request.password.is_some() {
                return Err(ports::DelegationError::Invalid(
                    "accounts are created by the cloud; delegate to an existing user by email"
                        .into(),
                ));
            }
            let user = self
                .authz
                .index()
                .user_by_email(&request.email)
                .map(|u| u.id.clone())
                .ok_or_else(|| {
                    ports::DelegationError::Invalid(format!(
                        "no user with email `{}` on this site",
                        request.email
                    ))
                })?;
            let req = DelegationRequest {
                user,
                role: request.role,
                scope: request.scope,
                not_before: None,
                expires_at: request.expires_at,
            };
            match self
                .delegations
                .create(actor, req)
                .await
                .map_err(delegation_error)?
            {
                delegation::Created::Effective(g) => Ok(DelegationOutcome::Applied(Some(
                    local_info(&g, Some(request.email.clone())),
                ))),
                delegation::Created::Pending(p) => {
                    Ok(DelegationOutcome::Pending { request_id: p.id })
                }
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        actor: &'a UserId,
        grant: &'a GrantId,
    ) -> BoxFut<'a, Result<DelegationOutcome, ports::DelegationError>> {
        Box::pin(async move {
            self.delegations
                .revoke(actor, grant)
                .await
                .map_err(delegation_error)?;
            Ok(DelegationOutcome::Applied(None))
        })
    }

    fn request_access<'a>(
        &'a self,
        actor: &'a UserId,
        request: AccessRequest,
    ) -> BoxFut<'a, Result<String, ports::DelegationError>> {
        Box::pin(async move {
            let note = request.message.unwrap_or_default();
            self.delegations
                .access_request(actor, request.scope, request.role, &note)
                .await
                .map(|p| p.id)
                .map_err(delegation_error)
        })
    }
}
