//! `GET /audit`: the audit trail, filtered to the units the caller may diagnose.

use axum::extract::State;
use serde::Deserialize;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiQuery, Caller};
use crate::api::ports::Target;
use crate::api::state::ApiState;
use crate::api::views::{AuditPage, AuditVerify, Sorted};
use crate::audit;
use crate::model::Capability;

/// Audit page size bounds.
const DEFAULT_AUDIT_PAGE: u32 = 50;
const MAX_AUDIT_PAGE: u32 = 200;
/// Longest `kind`, `actor` or `unit` filter.
const MAX_FILTER_CHARS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
    /// Only records with a `seq` below this (the `next_before` of the previous page).
    before: Option<i64>,
    kind: Option<String>,
    actor: Option<String>,
    unit: Option<String>,
}

/// Checks the query before anything is read (`400 invalid_query`); the page size.
pub fn check_query(q: &AuditQuery) -> Result<u32, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_AUDIT_PAGE}"),
        ));
    }
    for s in [&q.kind, &q.actor, &q.unit].into_iter().flatten() {
        if s.chars().count() > MAX_FILTER_CHARS {
            return Err(ApiError::bad_request(
                "invalid_query",
                "filter value too long",
            ));
        }
    }
    Ok(limit)
}

/// `GET /audit`: a page of records, newest first, limited to what the caller may diagnose.
pub async fn query(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Sorted<AuditPage>> {
    let user = &caller.session.user;
    let limit = check_query(&q)?;
    // Per unit: only records of units the caller may diagnose. Records about no unit (logins,
    // grants, delegations — they may name any unit or user) only for a caller who may diagnose
    // the whole site with no unit withheld. A `?unit=` filter naming a unit the caller may not
    // diagnose, or no unit at all, gives the same empty page.
    let authz = &state.0.ports.authz;
    let allowed: Vec<String> = authz
        .visible_units(user)
        .into_iter()
        .filter(|(_, caps)| caps.contains(Capability::Diagnose))
        .map(|(u, _)| u.to_string())
        .collect();
    let inventory = state.0.ports.units.units();
    let whole_site = authz
        .decide(user, Capability::Diagnose, &Target::Site)
        .is_allow()
        && inventory
            .iter()
            .all(|u| allowed.iter().any(|a| a == u.id.as_str()));
    if allowed.is_empty() && !whole_site {
        state
            .0
            .metrics
            .observe_denial("diagnose", "no_diagnose_scope");
        return Err(ApiError::forbidden(
            "reading the audit log needs `diagnose` on at least one unit",
        ));
    }
    let units: Option<Vec<String>> = match &q.unit {
        Some(u) => Some(allowed.into_iter().filter(|a| a == u).collect()),
        // Every unit and the records about none.
        None if whole_site => None,
        None => Some(allowed),
    };
    let query = audit::Query {
        units,
        kind: q.kind,
        actor: q.actor,
        before_seq: q.before,
        since_ms: None,
        limit,
    };
    let records = state
        .0
        .audit
        .store()
        .call(move |conn| audit::query(conn, &query))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit query failed");
            ApiError::internal()
        })?;
    let next_before = if records.len() == limit as usize {
        records.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Sorted(AuditPage {
        records,
        next_before,
    }))
}

/// `GET /audit/verify`: walks the whole hash chain of the audit trail and says whether every
/// record matches its content and its predecessor (else the `seq` of the first that does not).
/// Needs `diagnose` on the whole site (the chain covers every record).
pub async fn verify(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Sorted<AuditVerify>> {
    let user = &caller.session.user;
    if !crate::api::guard::allows(&state, user, Capability::Diagnose, &Target::Site) {
        return Err(ApiError::forbidden(
            "verifying the audit chain needs `diagnose` on the whole site",
        ));
    }
    let result = state
        .0
        .audit
        .store()
        .call(|c| audit::verify_chain(c))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit chain verification failed to run");
            ApiError::internal()
        })?;
    let checked_at = crate::clock::rfc3339(state.0.clock.now());
    Ok(Sorted(match result {
        Ok(records) => AuditVerify {
            intact: true,
            records,
            broken_at: None,
            checked_at,
        },
        Err(seq) => {
            tracing::error!(seq, "the audit chain is broken");
            AuditVerify {
                intact: false,
                records: 0,
                broken_at: Some(seq),
                checked_at,
            }
        }
    }))
}
