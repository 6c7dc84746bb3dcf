//! The durable jobs (passkey deletions that Entra ID has not confirmed yet,
//! …): operators see what is pending, per device ("pending revocations");
//! an administrator closes a job that keeps failing, by hand and audited.

use axum::extract::{Path, State};
use axum::Json;
use keyward_proto::views::{JobQuery, JobView};
use keyward_store::{Job, JobState};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiQuery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(close))
}

/// Jobs, oldest first: by default the pending ones (waiting, or failing and
/// tried again with back-off; `attempts` and `last_error` say how it goes).
#[utoipa::path(get, path = "/jobs", operation_id = "listJobs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = Vec<JobView>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> ApiResult<Json<Vec<JobView>>> {
    let job_state = match q.state.as_deref() {
        None => JobState::Pending,
        Some(s) => JobState::parse_field(s, "state").map_err(invalid)?,
    };
    let target = q.device.map(|serial| format!("device:{serial}"));
    let jobs = state
        .store
        .list_jobs(Some(job_state), target.as_deref())
        .await
        .map_err(|e| store_error("reading the jobs", e))?;
    Ok(Json(jobs.into_iter().map(view).collect()))
}

fn view(j: Job) -> JobView {
    let t = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    JobView {
        id: j.id.to_string(),
        kind: j.kind,
        target: j.target,
        state: j.state.to_string(),
        attempts: j.attempts,
        next_at: t(j.next_at),
        last_error: j.last_error,
        created_at: t(j.created_at),
        updated_at: t(j.updated_at),
    }
}

/// Close a pending job by hand: it will not run again (for a passkey Entra
/// ID will never confirm deleted, once it was deleted there some other way).
#[utoipa::path(post, path = "/jobs/{id}/close", operation_id = "closeJob", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobView, description = "The job, closed"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn close(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::JobsManage>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("id_invalid", "a job id is a UUID").field("id"))?;
    let job = state
        .store
        .get_job(id)
        .await
        .map_err(|e| store_error("reading the job", e))?;
    let draft = audit(
        &caller,
        "job.close",
        job.target.clone(),
        serde_json::json!({ "job": id, "kind": job.kind, "attempts": job.attempts, "last_error": job.last_error }),
    );
    state
        .store
        .close_job(id, &draft)
        .await
        .map_err(|e| store_error("closing the job", e))?;
    let job = state
        .store
        .get_job(id)
        .await
        .map_err(|e| store_error("reading the job", e))?;
    Ok(Json(view(job)))
}
