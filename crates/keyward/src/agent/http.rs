//! The agent's calls to the server. It only ever connects out.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

pub struct Server {
    http: reqwest::blocking::Client,
    pub base: String,
    credential: Option<String>,
}

/// An answer: HTTP status and JSON body (Null when there is none).
pub type Answer = (u16, Value);

impl Server {
    pub fn new(base: &str, credential: Option<String>) -> anyhow::Result<Self> {
        Ok(Server {
            http: reqwest::blocking::Client::builder()
                // Above the server's 25-second long-poll.
                .timeout(Duration::from_secs(45))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            credential,
        })
    }

    pub fn set_credential(&mut self, credential: String) {
        self.credential = Some(credential);
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> anyhow::Result<Answer> {
        let req = match &self.credential {
            Some(c) => req.bearer_auth(c),
            None => req,
        };
        let r = req
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {}", self.base))?;
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(self.http.get(format!("{}/api/v1{path}", self.base)))
    }

    pub fn post(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Answer> {
        self.send(
            self.http
                .post(format!("{}/api/v1{path}", self.base))
                .json(body),
        )
    }

    pub fn put(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Answer> {
        self.send(
            self.http
                .put(format!("{}/api/v1{path}", self.base))
                .json(body),
        )
    }
}

/// The body of a successful answer as the protocol's type, or the error.
pub fn body<T: serde::de::DeserializeOwned>(
    (status, v): Answer,
    ok: u16,
    what: &str,
) -> anyhow::Result<T> {
    if status != ok {
        anyhow::bail!("{what}: HTTP {status} {}", error_text(&v));
    }
    serde_json::from_value(v).with_context(|| format!("{what}: unreadable answer"))
}

/// `[code] message` of an API error body.
pub fn error_text(v: &Value) -> String {
    format!(
        "[{}] {}",
        v["error"]["code"].as_str().unwrap_or("error"),
        v["error"]["message"].as_str().unwrap_or("")
    )
}
