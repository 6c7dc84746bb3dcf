//! The audit trail: read it a page at a time, and verify its MAC chain.

use axum::extract::State;
use axum::Json;
use keyward_domain::AuditEvent;
use keyward_proto::views::AuditQuery;
use keyward_proto::{AuditVerifyReport, Page};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store_error;
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiQuery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(verify))
}

/// Audit records in order.
#[utoipa::path(get, path = "/audit", operation_id = "listAuditRecords", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Object, description = "Page of audit events"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::AuditRead>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEvent>>> {
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return Err(
                ApiError::bad_request("limit_out_of_range", "limit must be 1 to 1000")
                    .field("limit"),
            )
        }
    };
    let items = state
        .store
        .list_audit(q.after.unwrap_or(0), limit)
        .await
        .map_err(|e| store_error("reading the audit trail", e))?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(Page { items, next }))
}

/// Verify the whole MAC chain: detects a changed, deleted, reordered or
/// truncated record and names it.
#[utoipa::path(get, path = "/audit/verify", operation_id = "verifyAudit", tag = "audit",
    responses((status = 200, body = AuditVerifyReport)))]
async fn verify(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::AuditRead>,
) -> ApiResult<Json<AuditVerifyReport>> {
    let v = state
        .store
        .verify_audit_chain()
        .await
        .map_err(|e| store_error("verifying the audit trail", e))?;
    if !v.ok() {
        tracing::warn!(
            problems = v.problems.len(),
            "audit chain verification found problems"
        );
    }
    Ok(Json(AuditVerifyReport {
        ok: v.ok(),
        records: v.records.max(0) as u64,
        problems: v.problems.iter().map(|p| p.to_string()).collect(),
    }))
}
