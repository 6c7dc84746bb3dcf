//! The one typed client of Keyward's REST API (`/api/v1`), used by
//! `keyward issue`, `recycle`, `admin` and `agent`: bodies are the wire
//! types of `keyward-proto`, an error answer is an [`ApiError`] with the
//! API's error body. It only ever connects out.

use std::time::Duration;

use anyhow::Context;
use keyward_proto::agent::AgentDevicesView;
use keyward_proto::views::DeviceDetails;
use keyward_proto::{
    Assigned, ErrorBody, ErrorDetail, RecycleRequest, RelayBatch, RelayResult, SessionView,
    StartIssuance,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a call answers: the API's refusal is a value, not an error, so a
/// caller can tell "refused before the device was touched" (4xx) from a
/// server it cannot reach (the outer error).
pub type Answer<T> = anyhow::Result<Result<T, ApiError>>;

pub struct ApiClient {
    http: reqwest::blocking::Client,
    base: String,
    /// An API token or an agent credential (Bearer).
    credential: Option<String>,
}

/// An error answer of the API: its HTTP status and error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub error: ErrorDetail,
}

impl std::fmt::Display for ApiError {
    /// `403 [forbidden] field: message`, then each rejected row of an import.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.status, self.error.code)?;
        if let Some(field) = &self.error.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.error.message)?;
        if let Some(rows) = self
            .error
            .details
            .as_ref()
            .and_then(|d| d.get("rejected"))
            .and_then(|r| r.as_array())
        {
            for row in rows {
                write!(f, "\n  {row}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// A request body.
pub enum Body<'a, B: Serialize> {
    None,
    Json(&'a B),
    Csv(String),
}

impl ApiClient {
    /// A client of the server at `server` (`http(s)://host:port`).
    pub fn new(server: &str, credential: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        Ok(ApiClient {
            http: reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()?,
            base: server.trim_end_matches('/').to_string(),
            credential: credential.map(str::to_string),
        })
    }

    /// A client for an operator's API token (refused when empty).
    pub fn with_token(server: &str, token: &str, timeout: Duration) -> anyhow::Result<Self> {
        if token.is_empty() {
            anyhow::bail!("no API token: pass --token or set KEYWARD_TOKEN");
        }
        ApiClient::new(server, Some(token), timeout)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn set_credential(&mut self, credential: String) {
        self.credential = Some(credential);
    }

    /// One call. A success's body is read as `T` (an empty body as JSON
    /// `null`: `()`, `Option<_>`); an error answer is the [`ApiError`].
    pub fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Body<'_, B>,
    ) -> Answer<T> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c);
        }
        req = match body {
            Body::None => req,
            Body::Json(b) => req.json(b),
            Body::Csv(text) => req.header("content-type", "text/csv").body(text),
        };
        let resp = req
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {}", self.base))?;
        let status = resp.status();
        let text = resp.text()?;
        if status.is_success() {
            let text = if text.trim().is_empty() {
                "null"
            } else {
                &text
            };
            return serde_json::from_str(text)
                .with_context(|| {
                    format!("{path}: the server's answer is not what this client reads")
                })
                .map(Ok);
        }
        let error = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| ErrorDetail {
                code: "http_error".into(),
                message: text.chars().take(200).collect(),
                field: None,
                details: None,
            });
        Ok(Err(ApiError {
            status: status.as_u16(),
            error,
        }))
    }

    pub fn try_get<T: DeserializeOwned>(&self, path: &str) -> Answer<T> {
        self.call(Method::GET, path, Body::<()>::None)
    }

    pub fn try_post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Answer<T> {
        self.call(Method::POST, path, Body::Json(body))
    }

    pub fn try_put<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Answer<T> {
        self.call(Method::PUT, path, Body::Json(body))
    }

    /// GET; an error answer is an error.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.try_get(path)??)
    }

    /// POST; an error answer is an error.
    pub fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        Ok(self.try_post(path, body)??)
    }

    /// PUT; an error answer is an error.
    pub fn put<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        Ok(self.try_put(path, body)??)
    }

    // ── Device sessions ─────────────────────────────────────────────────

    /// Add Device for a user, action Issue: the first batch.
    pub fn start_issuance(&self, req: &StartIssuance) -> Answer<RelayBatch> {
        self.try_post("/issuance", req)
    }

    /// Add Device for a user, action Assign.
    pub fn assign(&self, req: &StartIssuance) -> Answer<Assigned> {
        self.try_post("/issuance", req)
    }

    /// The result of the batch out now; the next batch (or the end).
    pub fn relay(&self, result: &RelayResult) -> Answer<RelayBatch> {
        self.try_post(&format!("/issuance/{}/relay", result.session_id), result)
    }

    pub fn session(&self, id: &str) -> Answer<SessionView> {
        self.try_get(&format!("/issuance/{}", enc(id)))
    }

    pub fn cancel(&self, id: &str) -> Answer<SessionView> {
        self.try_post(&format!("/issuance/{}/cancel", enc(id)), &NoBody {})
    }

    pub fn retry(&self, id: &str) -> Answer<RelayBatch> {
        self.try_post(&format!("/issuance/{}/retry", enc(id)), &NoBody {})
    }

    pub fn recycle(&self, serial: &str, req: &RecycleRequest) -> Answer<RelayBatch> {
        self.try_post(&format!("/devices/{}/recycle", enc(serial)), req)
    }

    /// Starts the device's pending update (`via` as for Recycle).
    pub fn update(&self, serial: &str, req: &impl Serialize) -> Answer<RelayBatch> {
        self.try_post(&format!("/devices/{}/update", enc(serial)), req)
    }

    /// DELETE; an error answer is an error.
    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        let _: serde_json::Value = self.call(Method::DELETE, path, Body::<()>::None)??;
        Ok(())
    }

    /// Starts an unlock (`via` as for Recycle, or an empty body).
    pub fn unlock(&self, serial: &str, req: &impl Serialize) -> Answer<RelayBatch> {
        self.try_post(&format!("/devices/{}/unlock", enc(serial)), req)
    }

    pub fn device(&self, serial: &str) -> Answer<DeviceDetails> {
        self.try_get(&format!("/devices/{}", enc(serial)))
    }

    /// The devices the caller's paired agents report.
    pub fn agent_devices(&self) -> Answer<AgentDevicesView> {
        self.try_get("/agents/devices")
    }
}

/// An empty JSON object, for a POST that takes no fields.
#[derive(Serialize)]
pub struct NoBody {}

/// Percent-encodes one path segment or query value (RFC 3986's unreserved
/// characters stay as they are).
pub fn enc(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const UNRESERVED: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, UNRESERVED).to_string()
}
