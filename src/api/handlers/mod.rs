//! Route handlers, one module per resource. Each handler authenticates (except health, OpenAPI
//! and login), asks the authorization port through [`super::guard`], calls one engine port,
//! audits what changes a unit, and answers with a typed body from [`super::views`] or an
//! [`super::error::ApiError`] (engine errors convert with `?`).
//!
//! A new route goes into the module of its resource (or a new one here) and into
//! [`super::ROUTES`]; its bodies go into `views`, its documentation into `docs/openapi.json`.

pub mod access_requests;
pub mod audit;
pub mod businesses;
pub mod commands;
pub mod diagnostics;
pub mod grants;
pub mod lockouts;
pub mod scans;
pub mod sessions;
pub mod site_config;
pub mod system;
pub mod units;

use super::error::ApiError;

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;
