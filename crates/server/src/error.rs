//! One JSON error shape for the whole API:
//! `{"error":{"code":"pin_too_short","message":"…","field":"pin"}}`.
//! `code` is stable (clients branch on it); `message` is for people;
//! `field` names the offending input (a JSON path, or `row 7: login`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The API's error shape, shared with clients.
pub use keyward_proto::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                field: None,
                details: None,
            },
        }
    }

    /// A 429's wait: `Retry-After` on the response, and in the details.
    pub fn retry_after(self, seconds: u64) -> Self {
        self.details(serde_json::json!({ "retry_after_seconds": seconds }))
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.detail.details = Some(details);
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in or send an API token (Authorization: Bearer …)",
        )
    }

    pub fn forbidden(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role does not allow {what}"),
        )
    }

    /// 403 with a code of its own (a rule, not a role, refuses).
    pub fn forbidden_with(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        // The cause goes to the log (it may name tables or files), the client
        // gets a correlation-free generic message.
        tracing::error!(context, error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error while {context}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self
            .detail
            .details
            .as_ref()
            .and_then(|d| d["retry_after_seconds"].as_u64());
        let mut r = (self.status, axum::Json(ErrorBody { error: self.detail })).into_response();
        if let Some(s) = retry_after {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
