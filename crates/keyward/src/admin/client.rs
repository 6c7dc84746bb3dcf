//! The admin CLI's HTTP client: every admin command goes through the REST
//! API, authenticated by an API token, so the CLI can do exactly what the
//! token's role allows and nothing more.

use anyhow::{anyhow, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

/// An error answer of the API, printed as `error [code] field: message`.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.status.as_u16(), self.code)?;
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)?;
        if let Some(details) = &self.details {
            if let Some(rows) = details.get("rejected").and_then(|r| r.as_array()) {
                for row in rows {
                    write!(f, "\n  {row}")?;
                }
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl ApiClient {
    pub fn new(server: &str, token: &str) -> anyhow::Result<Self> {
        if token.is_empty() {
            return Err(anyhow!("no API token: pass --token or set KEYWARD_TOKEN"));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()?;
        Ok(ApiClient {
            base: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<RequestBody>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        match body {
            Some(RequestBody::Json(v)) => req = req.json(&v),
            Some(RequestBody::Csv(text)) => req = req.header("content-type", "text/csv").body(text),
            None => {}
        }
        let resp = req
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {}", self.base))?;
        let status = resp.status();
        let text = resp.text()?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).context("server sent invalid JSON");
        }
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let err = &parsed["error"];
        Err(ApiFailure {
            status,
            code: err["code"].as_str().unwrap_or("http_error").to_string(),
            message: err["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(200).collect()),
            field: err["field"].as_str().map(str::to_string),
            details: err.get("details").cloned(),
        }
        .into())
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, Some(RequestBody::Json(body)))
    }

    pub fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, Some(RequestBody::Json(body)))
    }
}

pub enum RequestBody {
    Json(Value),
    Csv(String),
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
