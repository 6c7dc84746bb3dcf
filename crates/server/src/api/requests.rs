//! Requests (issue 18): an issuance (or a replacement) that its device
//! policy puts on hold until a second person approves it
//! (`approval_required_for`). "Request Issuance" writes one (`POST
//! /requests`); a signed-in operator who is neither the requester nor the
//! recipient approves or denies it; the requester (or anyone who may issue)
//! cancels it; Add Device (`POST /issuance` with `request`) carries an
//! approved one out, once. The rules are `keyward_domain::request`'s.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::request::{may_cancel, may_decide, Asked, Decider};
use keyward_domain::{ApprovalAction, DevicePolicy, RequestState, Serial};
use keyward_store::Request;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(approve))
        .routes(routes!(deny))
        .routes(routes!(cancel))
        .routes(routes!(import))
        .routes(routes!(batch))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Write the good rows and report the bad ones (default: all or nothing).
    pub partial: Option<bool>,
}

/// What a bulk import made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCreated {
    pub batch: Option<Uuid>,
    pub imported: usize,
    #[schema(value_type = Vec<Object>)]
    pub rejected: Vec<keyward_proto::RowError>,
    pub mode: String,
}

/// A batch's progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    pub id: Uuid,
    pub created_by: String,
    pub rows: i64,
    /// Carried out and issued.
    pub issued: usize,
    /// Denied, cancelled, or carried out and failed.
    pub failed: usize,
    /// Approved and not yet collected, or waiting for approval.
    pub waiting: usize,
    pub requests: Vec<RequestView>,
}

/// Bulk issuance: a CSV of `login,policy[,serial]` (a header row naming
/// them) makes a batch of requests, pending where the policy requires
/// approval, else approved at once; operators collect them as the devices
/// arrive at their agents (Add Device carries out the matching request).
#[utoipa::path(post, path = "/requests/import", operation_id = "importRequests", tag = "requests", params(ImportParams),
    request_body(content = String, content_type = "text/csv", description = "login,policy[,serial]"),
    responses((status = 201, body = BatchCreated), (status = 400, body = ErrorBody, description = "bad rows (all or nothing: nothing written)")))]
async fn import(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesIssue>,
    Query(q): Query<ImportParams>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<BatchCreated>)> {
    let partial = q.partial.unwrap_or(false);
    let batch_id = Uuid::new_v4();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body.as_ref());
    let mut good = Vec::new();
    let mut rejected = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rejected.push(keyward_proto::RowError {
                    row,
                    code: "csv_invalid".into(),
                    field: String::new(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let field = |n: usize| record.get(n).map(str::to_string).filter(|s| !s.is_empty());
        let (Some(user), Some(policy)) = (field(0), field(1)) else {
            rejected.push(keyward_proto::RowError {
                row,
                code: "row_incomplete".into(),
                field: "login".into(),
                message: "a row is login,policy[,serial]".into(),
            });
            continue;
        };
        let new = NewRequest {
            user,
            policy,
            serial: field(2),
            kind: None,
            replaces: None,
            reason: None,
        };
        match new_request(&state, &caller, &new, Some(batch_id)).await {
            Ok((r, _)) => good.push(r),
            Err(e) => rejected.push(keyward_proto::RowError {
                row,
                code: e.detail.code.clone(),
                field: e.detail.field.clone().unwrap_or_default(),
                message: e.detail.message.clone(),
            }),
        }
    }
    let mode = if partial { "partial" } else { "all_or_nothing" };
    if good.is_empty() || (!rejected.is_empty() && !partial) {
        if rejected.is_empty() {
            return Err(ApiError::bad_request(
                "csv_empty",
                "the CSV has no request row",
            ));
        }
        return Err(ApiError::bad_request(
            "import_rejected",
            format!("{} rows refused: nothing was written", rejected.len()),
        )
        .details(serde_json::json!({ "rejected": rejected })));
    }
    let batch = keyward_store::RequestBatch {
        id: batch_id,
        created_by: caller.actor(),
        created_at: time::OffsetDateTime::now_utc(),
        rows_count: good.len() as i64,
    };
    let draft = audit(
        &caller,
        "request.import",
        format!("batch:{batch_id}"),
        serde_json::json!({ "requests": good.len(), "rejected": rejected.len(), "mode": mode }),
    );
    state
        .store
        .create_requests(Some(&batch), &good, &draft)
        .await
        .map_err(|e| store_error("writing the requests", e))?;
    Ok((
        StatusCode::CREATED,
        Json(BatchCreated {
            batch: Some(batch_id),
            imported: good.len(),
            rejected,
            mode: mode.into(),
        }),
    ))
}

/// A batch's progress: issued, failed, waiting.
#[utoipa::path(get, path = "/request-batches/{id}", operation_id = "getRequestBatch", tag = "requests", params(("id" = String, Path)),
    responses((status = 200, body = BatchView), (status = 404, body = ErrorBody)))]
async fn batch(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchView>> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("id_invalid", "a batch id is a UUID").field("id"))?;
    let b = found(state.store.get_request_batch(id).await)
        .map_err(|e| store_error("reading the batch", e))?
        .ok_or_else(|| ApiError::not_found("request batch").field("id"))?;
    let requests = state
        .store
        .list_requests(None, Some(id))
        .await
        .map_err(|e| store_error("reading the requests", e))?;
    let (mut issued, mut failed, mut waiting) = (0, 0, 0);
    let mut views = Vec::with_capacity(requests.len());
    for r in &requests {
        match r.state {
            RequestState::Pending | RequestState::Approved => waiting += 1,
            RequestState::Denied | RequestState::Cancelled => failed += 1,
            RequestState::Used => {
                let status = match r.session_id {
                    Some(s) => state.store.get_issuance(s).await.ok().map(|s| s.status),
                    None => None,
                };
                match status {
                    Some(keyward_domain::SessionStatus::Issued) => issued += 1,
                    Some(
                        keyward_domain::SessionStatus::Failed
                        | keyward_domain::SessionStatus::Cancelled,
                    ) => failed += 1,
                    _ => waiting += 1,
                }
            }
        }
        views.push(view(&state, r).await?);
    }
    Ok(Json(BatchView {
        id: b.id,
        created_by: b.created_by,
        rows: b.rows_count,
        issued,
        failed,
        waiting,
        requests: views,
    }))
}

/// Request Issuance (or a replacement's request).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    pub user: String,
    pub policy: String,
    /// The device, when one is named (else any device the operator
    /// collects it with).
    #[serde(default)]
    pub serial: Option<String>,
    /// `issuance` (default) or `replacement` (with `replaces`, `reason`).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub replaces: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A decision's note.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub note: Option<String>,
}

/// A request as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub id: Uuid,
    pub kind: String,
    pub user: String,
    pub policy: String,
    pub serial: Option<String>,
    pub replaces: Option<String>,
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
    /// `pending`, `approved`, `denied`, `cancelled`, `used`.
    pub state: String,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: time::OffsetDateTime,
    pub decided_by: Option<String>,
    pub note: Option<String>,
    /// The session that carried it out.
    pub session: Option<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `approved`, `denied`, `cancelled`, `used`.
    pub state: Option<String>,
    pub batch: Option<Uuid>,
}

fn kind_of(s: Option<&str>) -> ApiResult<ApprovalAction> {
    match s {
        None | Some("issuance") => Ok(ApprovalAction::Issuance),
        Some("replacement") => Ok(ApprovalAction::Replacement),
        Some(other) => Err(invalid(keyward_domain::ValidationError::unknown_value(
            "kind",
            other,
            &["issuance", "replacement"],
        ))),
    }
}

/// An issuance request needs `devices.issue`, a replacement's
/// `devices.replace`.
fn may_handle(caller: &Caller, kind: &str) -> ApiResult<()> {
    let p = if kind == "replacement" {
        keyward_domain::Permission::DevicesReplace
    } else {
        keyward_domain::Permission::DevicesIssue
    };
    caller.require(p)
}

pub async fn view(state: &AppState, r: &Request) -> ApiResult<RequestView> {
    let user = state
        .store
        .get_user(r.user_id)
        .await
        .map_err(|e| store_error("reading the user", e))?;
    let policy = state
        .store
        .get_policy(r.policy_id)
        .await
        .map_err(|e| store_error("reading the policy", e))?;
    Ok(RequestView {
        id: r.id,
        kind: r.kind.clone(),
        user: user.login,
        policy: policy.name,
        serial: r.serial.clone(),
        replaces: r.replaces.clone(),
        reason: r.reason.clone(),
        batch: r.batch_id,
        state: r.state.as_str().to_string(),
        requested_by: r.requested_by.clone(),
        created_at: r.created_at,
        decided_by: r.decided_by.clone(),
        note: r.note.clone(),
        session: r.session_id,
    })
}

/// A new request, checked (the user, the policy, the device if named) and
/// pending when the policy requires approval for its kind, else approved.
pub async fn new_request(
    state: &AppState,
    caller: &Caller,
    req: &NewRequest,
    batch: Option<Uuid>,
) -> ApiResult<(Request, DevicePolicy)> {
    let kind = kind_of(req.kind.as_deref())?;
    let user = crate::api::users::load(state, &req.user).await?;
    let policy = crate::api::policies::load(state, &req.policy).await?;
    let serial = match req
        .serial
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => {
            let serial = Serial::parse("serial", s).map_err(invalid)?;
            let device = found(state.store.get_device_by_serial(serial).await)
                .map_err(|e| store_error("reading the device", e))?
                .ok_or_else(|| ApiError::not_found("device").field("serial"))?;
            policy.check_device(&device).map_err(invalid)?;
            Some(serial.to_string())
        }
    };
    if kind == ApprovalAction::Replacement && req.replaces.is_none() {
        return Err(ApiError::bad_request(
            "replaces_required",
            "a replacement request names the device it replaces",
        )
        .field("replaces"));
    }
    let state_now = if policy.requires_approval(kind) {
        RequestState::Pending
    } else {
        RequestState::Approved
    };
    Ok((
        Request {
            id: Uuid::new_v4(),
            kind: kind.as_str().to_string(),
            user_id: user.id,
            policy_id: policy.id,
            serial,
            replaces: req.replaces.clone(),
            reason: req.reason.clone(),
            batch_id: batch,
            state: state_now,
            requested_by: caller.actor(),
            created_at: time::OffsetDateTime::now_utc(),
            decided_by: None,
            decided_at: None,
            note: None,
            session_id: None,
            used_at: None,
        },
        policy,
    ))
}

/// Request Issuance: pending until a second operator approves it when the
/// policy requires approval (else approved at once).
#[utoipa::path(post, path = "/requests", operation_id = "createRequest", tag = "requests",
    request_body = NewRequest,
    responses((status = 201, body = RequestView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesRead>,
    crate::json::ApiJson(req): crate::json::ApiJson<NewRequest>,
) -> ApiResult<(StatusCode, Json<RequestView>)> {
    may_handle(&caller, req.kind.as_deref().unwrap_or("issuance"))?;
    let (request, policy) = new_request(&state, &caller, &req, None).await?;
    let draft = audit(
        &caller,
        "request.create",
        format!("request:{}", request.id),
        serde_json::json!({ "kind": request.kind, "user": req.user, "policy": policy.name, "serial": request.serial, "state": request.state }),
    );
    state
        .store
        .create_requests(None, std::slice::from_ref(&request), &draft)
        .await
        .map_err(|e| store_error("writing the request", e))?;
    Ok((StatusCode::CREATED, Json(view(&state, &request).await?)))
}

/// Requests, by state and batch (newest first).
#[utoipa::path(get, path = "/requests", operation_id = "listRequests", tag = "requests", params(ListQuery),
    responses((status = 200, body = Vec<RequestView>)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<RequestView>>> {
    let wanted = q
        .state
        .as_deref()
        .map(|s| RequestState::parse_field(s, "state"))
        .transpose()
        .map_err(invalid)?;
    let requests = state
        .store
        .list_requests(wanted, q.batch)
        .await
        .map_err(|e| store_error("reading the requests", e))?;
    let mut out = Vec::with_capacity(requests.len());
    for r in &requests {
        out.push(view(&state, r).await?);
    }
    Ok(Json(out))
}

async fn load(state: &AppState, id: &str) -> ApiResult<Request> {
    let id = Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request("id_invalid", "a request id is a UUID").field("id"))?;
    found(state.store.get_request(id).await)
        .map_err(|e| store_error("reading the request", e))?
        .ok_or_else(|| ApiError::not_found("request").field("id"))
}

#[utoipa::path(get, path = "/requests/{id}", operation_id = "getRequest", tag = "requests", params(("id" = String, Path)),
    responses((status = 200, body = RequestView), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestView>> {
    let r = load(&state, &id).await?;
    Ok(Json(view(&state, &r).await?))
}

/// Approve or deny: a signed-in second person, neither requester nor
/// recipient.
async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &str,
    to: RequestState,
    note: Option<String>,
) -> ApiResult<Json<RequestView>> {
    let r = load(state, id).await?;
    may_handle(caller, &r.kind)?;
    let actor = caller.actor();
    may_decide(
        &Asked {
            requested_by: &r.requested_by,
            recipient: r.user_id,
            state: r.state,
        },
        &Decider {
            actor: &actor,
            account: caller.account_id(),
            linked_user: caller.user_id,
        },
    )
    .map_err(|e| {
        let status = if e.code == "request_not_pending" {
            ApiError::conflict(&e.code, e.message)
        } else {
            ApiError::forbidden_with(&e.code, e.message)
        };
        status.field(&e.field)
    })?;
    let action = if to == RequestState::Approved {
        "request.approve"
    } else {
        "request.deny"
    };
    let draft = audit(
        caller,
        action,
        format!("request:{}", r.id),
        serde_json::json!({ "note": note }),
    );
    state
        .store
        .move_request(
            r.id,
            &[RequestState::Pending],
            to,
            Some(&actor),
            note.as_deref(),
            &draft,
        )
        .await
        .map_err(|e| store_error("deciding the request", e))?;
    let r = load(state, id).await?;
    Ok(Json(view(state, &r).await?))
}

#[utoipa::path(post, path = "/requests/{id}/approve", operation_id = "approveRequest", tag = "requests", params(("id" = String, Path)),
    request_body(content = Decision, description = "optional: a note"),
    responses((status = 200, body = RequestView),
        (status = 403, body = ErrorBody, description = "an API token (approver_not_a_person), the requester (approver_is_requester), the recipient (approver_is_recipient)"),
        (status = 409, body = ErrorBody, description = "not pending")))]
async fn approve(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesRead>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RequestView>> {
    let d: Decision = crate::json::optional_body(&body)?;
    decide(&state, &caller, &id, RequestState::Approved, d.note).await
}

#[utoipa::path(post, path = "/requests/{id}/deny", operation_id = "denyRequest", tag = "requests", params(("id" = String, Path)),
    request_body(content = Decision, description = "optional: a note"),
    responses((status = 200, body = RequestView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn deny(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesRead>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RequestView>> {
    let d: Decision = crate::json::optional_body(&body)?;
    decide(&state, &caller, &id, RequestState::Denied, d.note).await
}

#[utoipa::path(post, path = "/requests/{id}/cancel", operation_id = "cancelRequest", tag = "requests", params(("id" = String, Path)),
    request_body(content = Decision, description = "optional: a note"),
    responses((status = 200, body = RequestView), (status = 409, body = ErrorBody, description = "denied, cancelled or carried out already")))]
async fn cancel(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesRead>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RequestView>> {
    let d: Decision = crate::json::optional_body(&body)?;
    let r = load(&state, &id).await?;
    may_handle(&caller, &r.kind)?;
    may_cancel(r.state).map_err(|e| ApiError::conflict(&e.code, e.message).field(&e.field))?;
    let draft = audit(
        &caller,
        "request.cancel",
        format!("request:{}", r.id),
        serde_json::json!({ "note": d.note }),
    );
    state
        .store
        .move_request(
            r.id,
            &[RequestState::Pending, RequestState::Approved],
            RequestState::Cancelled,
            None,
            d.note.as_deref(),
            &draft,
        )
        .await
        .map_err(|e| store_error("cancelling the request", e))?;
    let r = load(&state, &id).await?;
    Ok(Json(view(&state, &r).await?))
}

/// The oldest approved request of `user` under `policy` for the device
/// `serial` (or any device).
pub async fn matching(
    state: &AppState,
    kind: ApprovalAction,
    user: Uuid,
    policy: &DevicePolicy,
    serial: &str,
) -> ApiResult<Option<Uuid>> {
    let approved = state
        .store
        .list_requests(Some(RequestState::Approved), None)
        .await
        .map_err(|e| store_error("reading the requests", e))?;
    Ok(approved
        .iter()
        .rev()
        .find(|r| {
            r.kind == kind.as_str()
                && r.user_id == user
                && r.policy_id == policy.id
                && r.serial.as_deref().is_none_or(|s| s == serial)
        })
        .map(|r| r.id))
}

/// Add Device under a policy that requires approval: the approved request
/// `id` of this user, policy (and device, when it named one), used once by
/// the session `session` (released again if the session does not start).
pub async fn carry_out(
    state: &AppState,
    id: Option<Uuid>,
    kind: ApprovalAction,
    user: Uuid,
    policy: &DevicePolicy,
    serial: &str,
    session: Uuid,
) -> ApiResult<Uuid> {
    // None named: an approved request for this user, policy and device
    // (or any device) is carried out (a batch collected at Add Device).
    let id = match id {
        Some(id) => Some(id),
        None => matching(state, kind, user, policy, serial).await?,
    };
    let Some(id) = id else {
        return Err(ApiError::conflict(
            "approval_required",
            format!(
                "the policy {} requires a second operator's approval for {}: request it (Request Issuance, POST /api/v1/requests) and carry out the approved request",
                policy.name,
                kind.as_str()
            ),
        )
        .field("request"));
    };
    let r = found(state.store.get_request(id).await)
        .map_err(|e| store_error("reading the request", e))?
        .ok_or_else(|| ApiError::not_found("request").field("request"))?;
    let same = r.kind == kind.as_str()
        && r.user_id == user
        && r.policy_id == policy.id
        && r.serial.as_deref().is_none_or(|s| s == serial);
    if !same {
        return Err(ApiError::conflict(
            "request_mismatch",
            "the request is for another user, policy, device or action",
        )
        .field("request"));
    }
    keyward_domain::request::may_carry_out(r.state)
        .map_err(|e| ApiError::conflict(&e.code, e.message).field("request"))?;
    state
        .store
        .use_request(id, session)
        .await
        .map_err(|e| store_error("using the request", e))?;
    Ok(id)
}
