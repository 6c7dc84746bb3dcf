//! The REST API under `/api/v1`, one module per resource. Each handler takes
//! a [`Caller`](crate::auth::Caller), checks exactly one permission, and
//! appends its audit event in the same store transaction as its change.

use keyward_domain::{AuditDraft, AuditOutcome, ValidationError};
use keyward_proto::views::ListQuery;
use keyward_store::{StoreError, StoreResult};
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub mod audit;
pub mod device_actions;
pub mod devices;
pub mod import;
pub mod jobs;
pub mod operators;
pub mod passkey_services;
pub mod policies;
pub mod reports;
pub mod requests;
pub mod session;
pub mod settings;
pub mod tokens;
pub mod users;

/// Bulk imports may be far larger than other requests (a million users is
/// about 70 MB of CSV).
pub const MAX_IMPORT_BYTES: usize = 512 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(session::router())
        .merge(users::router())
        .merge(devices::router())
        .merge(users::import_router().layer(axum::extract::DefaultBodyLimit::max(MAX_IMPORT_BYTES)))
        .merge(
            devices::import_router().layer(axum::extract::DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .merge(policies::router())
        .merge(settings::router())
        .merge(passkey_services::router())
        .merge(operators::router())
        .merge(tokens::router())
        .merge(audit::router())
        .merge(jobs::router())
        .merge(device_actions::router())
        .merge(reports::router())
        .merge(requests::router())
        .merge(crate::issuance::router())
        .merge(crate::agents::router())
        .merge(crate::initial_pin::router())
}

/// A validation error from the domain, as a 400 naming the field.
pub fn invalid(e: ValidationError) -> ApiError {
    let mut err = ApiError::bad_request(&e.code, e.message);
    if !e.field.is_empty() {
        err = err.field(e.field);
    }
    err
}

/// A store error as the API reports it.
pub fn store_error(context: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { entity, .. } => ApiError::not_found(entity),
        StoreError::Conflict {
            code,
            field,
            message,
        } => ApiError::conflict(code, message).field(field),
        StoreError::Validation(v) => invalid(v),
        other => ApiError::internal(context, other),
    }
}

/// A lookup whose "not found" is an answer, not an error.
pub fn found<T>(r: StoreResult<T>) -> StoreResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The audit event for a successful action by `caller`.
pub fn audit(
    caller: &Caller,
    action: &str,
    target: impl Into<String>,
    details: serde_json::Value,
) -> AuditDraft {
    let mut details = details;
    keyward_domain::audit::redact_secrets(&mut details);
    AuditDraft {
        actor: caller.actor(),
        action: action.to_string(),
        target: target.into(),
        outcome: AuditOutcome::Success,
        details,
    }
}

/// The page size a list query asks for (default 50).
pub fn page_limit(q: &ListQuery) -> Result<u32, ApiError> {
    {
        match q.limit {
            None => Ok(50),
            Some(n) if (1..=500).contains(&n) => Ok(n),
            Some(_) => Err(
                ApiError::bad_request("limit_out_of_range", "limit must be 1 to 500")
                    .field("limit"),
            ),
        }
    }
}

/// A credential on record as the API shows it (never its DER).
pub fn credential_view(c: keyward_store::Credential) -> keyward_proto::CredentialView {
    keyward_proto::CredentialView {
        id: c.id,
        device_id: c.device_id,
        session_id: c.session_id,
        kind: c.kind,
        slot: c.slot,
        serial: c.serial,
        not_after: c.not_after,
        created_at: c.created_at,
        revoked_at: c.revoked_at,
        attested: c.attested,
    }
}
