//! A JSON body extractor whose rejections use the API's error shape and say
//! exactly what was wrong: malformed JSON, invalid UTF-8, an unknown field,
//! a wrong type or an unknown enum value, with the field's path.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

/// An optional JSON body (Recycle, Unlock): none, or only whitespace, is
/// the default.
pub fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("body_invalid", e.to_string()))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| ct.split(';').next().unwrap_or("").trim() == "application/json")
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body exceeds the configured size limit",
                )
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document into `T`, with the API's error codes.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("body is not valid UTF-8 ({e})"))
    })?;
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        let code = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed_json"
            }
            serde_json::error::Category::Io => "unreadable_body",
            serde_json::error::Category::Data => {
                if message.starts_with("unknown field") {
                    "unknown_field"
                } else if message.starts_with("unknown variant") || message.starts_with("unknown ")
                {
                    // serde's own enum error, or a canonical-name enum's
                    // ("unknown state 'x'; allowed: …").
                    "unknown_value"
                } else if message.starts_with("missing field") {
                    "missing_field"
                } else if message.starts_with("invalid type") {
                    "wrong_type"
                } else {
                    "invalid_value"
                }
            }
        };
        let mut e = ApiError::bad_request(code, message.clone());
        // serde_path_to_error's path already ends with an unknown field's
        // name; for a missing field it is the parent's path.
        let field = if code == "missing_field" {
            // serde names the field in backticks: `unknown field `x`, expected …`.
            let name = message.split('`').nth(1).unwrap_or("").to_string();
            if path == "." || path.is_empty() {
                name
            } else {
                format!("{path}.{name}")
            }
        } else {
            path
        };
        if !field.is_empty() && field != "." && field != "?" {
            e = e.field(field);
        }
        e
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        login: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        mode: Mode,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Displayed,
    }

    fn code(body: &[u8]) -> (String, Option<String>) {
        let e = parse_json::<Body>(body).unwrap_err();
        (e.detail.code, e.detail.field)
    }

    #[test]
    fn each_kind_of_bad_json_has_its_code_and_field() {
        assert_eq!(code(b"{"), ("malformed_json".into(), None));
        assert_eq!(
            code(b"{\"login\":1}"),
            ("wrong_type".into(), Some("login".into()))
        );
        assert_eq!(
            code(b"{\"login\":\"a\",\"x\":1}"),
            ("unknown_field".into(), Some("x".into()))
        );
        assert_eq!(
            code(b"{\"login\":\"a\",\"inner\":{\"mode\":\"nope\"}}"),
            ("unknown_value".into(), Some("inner.mode".into()))
        );
        assert_eq!(code(b"{}"), ("missing_field".into(), Some("login".into())));
        assert_eq!(code(b"{\"login\":\"\xff\"}").0, "invalid_utf8");
    }
}

/// Query-string extractor with the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}
