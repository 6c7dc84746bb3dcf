//! Bulk imports (users, devices): CSV or a JSON array, checked row by row,
//! all or nothing by default or partial on request, with every rejected row
//! named in the answer.

use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use keyward_proto::views::ImportQuery;
use keyward_proto::{ImportReport, RowError};
use keyward_store::ImportMode;
use serde::de::DeserializeOwned;

use super::{audit, store_error};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::parse_json;

/// The rows of an import body: CSV through `csv`, or a JSON array.
pub fn read_rows<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    csv: fn(&[u8]) -> ApiResult<Vec<Result<T, RowError>>>,
) -> ApiResult<Vec<Result<T, RowError>>> {
    match content_type(headers).as_str() {
        "text/csv" => csv(body),
        "application/json" => Ok(parse_json::<Vec<T>>(body)?.into_iter().map(Ok).collect()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send text/csv or application/json",
        )),
    }
}

/// Runs an import of `what`s (`user`, `device`): audits it, writes through
/// `write`, and answers with the report, or a 400 naming every rejected row
/// when an all-or-nothing import had any.
pub async fn run_import<T, F, Fut>(
    caller: &Caller,
    what: &str,
    q: ImportQuery,
    rows: Vec<Result<T, RowError>>,
    write: F,
) -> ApiResult<Json<ImportReport>>
where
    F: FnOnce(Vec<T>, ImportMode, keyward_domain::AuditDraft) -> Fut,
    Fut: std::future::Future<Output = keyward_store::StoreResult<keyward_store::ImportReport>>,
{
    let partial = q.partial.unwrap_or(false);
    let mode = if partial {
        ImportMode::SkipInvalid
    } else {
        ImportMode::AllOrNothing
    };
    let draft = audit(
        caller,
        &format!("{what}.import"),
        format!("{what}s"),
        serde_json::json!({ "rows": rows.len(), "mode": mode_name(mode) }),
    );
    let (imported, rejected) = import_rows(rows, mode, |good| write(good, mode, draft)).await?;
    if !rejected.is_empty() && !partial {
        return Err(rejection(rejected, what));
    }
    Ok(Json(ImportReport {
        imported,
        rejected,
        mode: mode_name(mode).into(),
    }))
}

pub fn mode_name(mode: ImportMode) -> &'static str {
    match mode {
        ImportMode::AllOrNothing => "all_or_nothing",
        ImportMode::SkipInvalid => "partial",
    }
}

/// Runs an import: rows that did not even parse are rejected here; the rest
/// go to the store, which validates, finds duplicates (in the batch and in
/// the store) and writes according to `mode`. Row numbers are the input's
/// (1-based data rows). In all-or-nothing mode a parse failure stops before
/// the store is touched.
pub async fn import_rows<T, F, Fut>(
    rows: Vec<Result<T, RowError>>,
    mode: ImportMode,
    write: F,
) -> ApiResult<(usize, Vec<RowError>)>
where
    F: FnOnce(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = keyward_store::StoreResult<keyward_store::ImportReport>>,
{
    let mut good = Vec::with_capacity(rows.len());
    let mut numbers = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        match row {
            Ok(v) => {
                good.push(v);
                numbers.push(i + 1);
            }
            Err(e) => rejected.push(e),
        }
    }
    if !rejected.is_empty() && mode == ImportMode::AllOrNothing {
        return Ok((0, rejected));
    }
    let report = write(good).await.map_err(|e| store_error("importing", e))?;
    for r in report.rejected {
        rejected.push(row_error(
            numbers.get(r.row).copied().unwrap_or(r.row + 1),
            r.error,
        ));
    }
    rejected.sort_by_key(|r| r.row);
    Ok((report.inserted as usize, rejected))
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

pub fn row_error(row: usize, e: keyward_domain::ValidationError) -> RowError {
    RowError {
        row,
        code: e.code,
        field: e.field,
        message: e.message,
    }
}

/// The 400 for an all-or-nothing import with bad rows: names the first one.
pub fn rejection(rejected: Vec<RowError>, what: &str) -> ApiError {
    let first = &rejected[0];
    ApiError::bad_request(
        "import_rejected",
        format!(
            "{} {what} row(s) rejected, nothing imported; first: row {}: {}",
            rejected.len(),
            first.row,
            first.message
        ),
    )
    .field(format!("row {}: {}", first.row, first.field))
    .details(serde_json::json!({ "rejected": rejected }))
}
