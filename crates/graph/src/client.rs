//! The HTTP side: token cache, retries, the four fido2Methods calls.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::assertion::ClientCertificate;
use crate::error::{classify, classify_token, Call, GraphError};
use crate::model::{Collection, CreationOptions, Fido2Method, NewFido2Method, TokenResponse};

/// The Graph API version. Beta allows a custom challenge timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiVersion {
    #[default]
    V1,
    Beta,
}

impl ApiVersion {
    pub fn path(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v1.0" | "v1" => Some(ApiVersion::V1),
            "beta" => Some(ApiVersion::Beta),
            _ => None,
        }
    }
}

/// How throttling (429) and unavailability (503) are retried. Written here
/// rather than taken from a retry middleware: Graph's Retry-After decides
/// the wait, a registration's challenge must not outlive its retries, and
/// each retry is logged with the call it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// A Retry-After longer than this is cut to it (and used when absent).
    pub max_wait: Duration,
    pub default_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            max_wait: Duration::from_secs(30),
            default_wait: Duration::from_secs(2),
        }
    }
}

/// A Passkey-Enabled Service as the client needs it.
#[derive(Clone)]
pub struct GraphConfig {
    /// `https://login.microsoftonline.com` (national clouds differ).
    pub authority_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    /// A certificate credential: when set, the token request carries a
    /// signed client assertion and no client secret.
    pub client_certificate: Option<ClientCertificate>,
    /// `https://graph.microsoft.com/.default`.
    pub token_scope: String,
    /// `https://graph.microsoft.com`.
    pub graph_url: String,
    pub api_version: ApiVersion,
    pub retry: RetryPolicy,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConfig")
            .field("authority_url", &self.authority_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_scope", &self.token_scope)
            .field("graph_url", &self.graph_url)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

impl GraphConfig {
    pub fn new(
        authority_url: &str,
        tenant_id: &str,
        client_id: &str,
        client_secret: &str,
        token_scope: &str,
        graph_url: &str,
    ) -> Self {
        GraphConfig {
            authority_url: authority_url.trim_end_matches('/').into(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: Zeroizing::new(client_secret.into()),
            client_certificate: None,
            token_scope: token_scope.into(),
            graph_url: graph_url.trim_end_matches('/').into(),
            api_version: ApiVersion::V1,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(20),
        }
    }

    /// Authenticates with a certificate credential instead of a secret.
    pub fn with_certificate(mut self, cert_pem: &str, key_pem: &str) -> Result<Self, GraphError> {
        self.client_certificate = Some(ClientCertificate::from_pem(cert_pem, key_pem)?);
        self.client_secret = Zeroizing::new(String::new());
        Ok(self)
    }
}

struct CachedToken {
    token: Zeroizing<String>,
    valid_until: Instant,
}

/// The Graph client. Cheap to share behind an `Arc`; the token cache is
/// inside.
pub struct GraphClient {
    http: reqwest::Client,
    cfg: GraphConfig,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes one path segment (a UPN or object ID): RFC 3986's
/// unreserved characters and `@` stay as they are.
fn segment(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const SEGMENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'@');
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn network(what: &str, e: reqwest::Error) -> GraphError {
    // reqwest's message includes the URL (no secret in ours); keep one line.
    let msg = e.to_string();
    GraphError::Network {
        what: what.into(),
        message: msg.lines().next().unwrap_or("").to_string(),
    }
}

/// Seconds of a Retry-After header (delta-seconds form; an HTTP date or
/// garbage gives None).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl GraphClient {
    pub fn new(cfg: GraphConfig) -> Result<Self, GraphError> {
        for (name, v) in [
            ("authority URL", &cfg.authority_url),
            ("tenant ID", &cfg.tenant_id),
            ("client ID", &cfg.client_id),
            ("token scope", &cfg.token_scope),
            ("Graph URL", &cfg.graph_url),
        ] {
            if v.trim().is_empty() {
                return Err(GraphError::Config(format!("{name} is empty")));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("keyward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Config(e.to_string()))?;
        Ok(GraphClient {
            http,
            cfg,
            token: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &GraphConfig {
        &self.cfg
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.cfg.authority_url,
            segment(&self.cfg.tenant_id)
        )
    }

    fn methods_url(&self, user: &str) -> String {
        format!(
            "{}/{}/users/{}/authentication/fido2Methods",
            self.cfg.graph_url,
            self.cfg.api_version.path(),
            segment(user)
        )
    }

    /// A bearer token: the cached one while it is valid, else a new one by
    /// client credentials.
    async fn token(&self) -> Result<Zeroizing<String>, GraphError> {
        let mut cache = self.token.lock().await;
        if let Some(t) = cache.as_ref().filter(|t| t.valid_until > Instant::now()) {
            return Ok(t.token.clone());
        }
        let token_url = self.token_url();
        let mut form: Vec<(&str, Zeroizing<String>)> = vec![
            ("grant_type", Zeroizing::new("client_credentials".into())),
            ("client_id", Zeroizing::new(self.cfg.client_id.clone())),
            ("scope", Zeroizing::new(self.cfg.token_scope.clone())),
        ];
        match &self.cfg.client_certificate {
            // A fresh assertion per request: the authority refuses a reused jti.
            Some(cert) => {
                form.push((
                    "client_assertion_type",
                    Zeroizing::new(crate::assertion::JWT_BEARER.into()),
                ));
                form.push((
                    "client_assertion",
                    Zeroizing::new(cert.assertion(&self.cfg.client_id, &token_url)?),
                ));
            }
            None => form.push(("client_secret", self.cfg.client_secret.clone())),
        }
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = self
            .send_with_retries("the authority", || self.http.post(&token_url).form(&form))
            .await?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| network("the authority", e))?;
        if !status.is_success() {
            return Err(classify_token(status.as_u16(), &body));
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| GraphError::Decode {
            what: "the authority".into(),
            message: format!("token response: {e}"),
        })?;
        // Renew a minute early (or at half-life for short tokens).
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(300));
        let margin = Duration::from_secs(60).min(lifetime / 2);
        let token = Zeroizing::new(t.access_token);
        *cache = Some(CachedToken {
            token: token.clone(),
            valid_until: Instant::now() + lifetime - margin,
        });
        tracing::debug!(lifetime_s = lifetime.as_secs(), "Graph token obtained");
        Ok(token)
    }

    /// Sends, retrying 429 and 503 after Retry-After as the policy allows.
    async fn send_with_retries(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, GraphError> {
        let policy = self.cfg.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let resp = build().send().await.map_err(|e| network(what, e))?;
            let status = resp.status();
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
            {
                return Ok(resp);
            }
            if attempt > policy.max_retries {
                return Err(GraphError::Throttled {
                    status: status.as_u16(),
                    attempts: attempt,
                });
            }
            let wait = retry_after(&resp)
                .unwrap_or(policy.default_wait)
                .min(policy.max_wait);
            tracing::info!(
                status = status.as_u16(),
                wait_ms = wait.as_millis() as u64,
                attempt,
                "{what} asked to retry later"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One Graph call: token, retries, one renewal of a refused token.
    async fn call(
        &self,
        kind: Call,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        user: &str,
        id: &str,
    ) -> Result<(StatusCode, bytes_body::Body), GraphError> {
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let resp = self
                .send_with_retries("Graph", || {
                    let mut r = self
                        .http
                        .request(method.clone(), url)
                        .bearer_auth(token.as_str());
                    if let Some(b) = body {
                        r = r.json(b);
                    }
                    r
                })
                .await?;
            let status = resp.status();
            tracing::debug!(method = %method, status = status.as_u16(), "Graph call");
            let bytes = resp.bytes().await.map_err(|e| network("Graph", e))?;
            if status == StatusCode::UNAUTHORIZED && !renewed {
                // The cached token may have been revoked or expired early.
                *self.token.lock().await = None;
                renewed = true;
                continue;
            }
            if !status.is_success() {
                return Err(classify(kind, status.as_u16(), &bytes, user, id));
            }
            return Ok((status, bytes_body::Body(bytes.to_vec())));
        }
    }

    fn decode<T: DeserializeOwned>(what: &str, b: &bytes_body::Body) -> Result<T, GraphError> {
        serde_json::from_slice(&b.0).map_err(|e| GraphError::Decode {
            what: "Graph".into(),
            message: format!("{what}: {e}"),
        })
    }

    /// GET creationOptions for `user` (UPN or object ID). With the beta API
    /// and `challenge_timeout_minutes` (5..=43200) the challenge lives longer.
    pub async fn creation_options(
        &self,
        user: &str,
        challenge_timeout_minutes: Option<u32>,
    ) -> Result<CreationOptions, GraphError> {
        let mut url = format!("{}/creationOptions", self.methods_url(user));
        if let (ApiVersion::Beta, Some(m)) = (self.cfg.api_version, challenge_timeout_minutes) {
            url = format!("{url}(challengeTimeoutInMinutes={})", m.clamp(5, 43_200));
        }
        let (_, body) = self
            .call(Call::CreationOptions, Method::GET, &url, None, user, "")
            .await?;
        // v1.0 answers the object itself; the beta page shows it in "value".
        let v: serde_json::Value = Self::decode("creationOptions", &body)?;
        let inner = match v.get("value") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => v,
        };
        serde_json::from_value(inner).map_err(|e| GraphError::Decode {
            what: "Graph".into(),
            message: format!("creationOptions: {e}"),
        })
    }

    /// POST fido2Methods: registers the passkey; 201 with the method.
    pub async fn register(
        &self,
        user: &str,
        method: &NewFido2Method,
    ) -> Result<Fido2Method, GraphError> {
        let body = serde_json::to_value(method).expect("a fido2 method serialises");
        let (_, answer) = self
            .call(
                Call::Register,
                Method::POST,
                &self.methods_url(user),
                Some(&body),
                user,
                "",
            )
            .await?;
        Self::decode("fido2AuthenticationMethod", &answer)
    }

    /// The user's passkeys.
    pub async fn list(&self, user: &str) -> Result<Vec<Fido2Method>, GraphError> {
        let (_, body) = self
            .call(
                Call::List,
                Method::GET,
                &self.methods_url(user),
                None,
                user,
                "",
            )
            .await?;
        Ok(Self::decode::<Collection<Fido2Method>>("fido2Methods", &body)?.value)
    }

    /// DELETE a passkey. `Ok(false)`: it was already gone (compensation is
    /// idempotent).
    pub async fn delete(&self, user: &str, id: &str) -> Result<bool, GraphError> {
        let url = format!("{}/{}", self.methods_url(user), segment(id));
        match self
            .call(Call::Delete, Method::DELETE, &url, None, user, id)
            .await
        {
            Ok(_) => Ok(true),
            Err(GraphError::MethodNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

mod bytes_body {
    /// A response body, kept as bytes until decoded.
    pub struct Body(pub Vec<u8>);
}
