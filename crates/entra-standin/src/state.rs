//! The tenant's state (users, tokens, outstanding challenges, passkeys,
//! queued faults) and the test-only admin endpoints.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use webauthn_rs_core::proto::{AttestationCaList, RegistrationState};
use webauthn_rs_core::WebauthnCore;

use crate::config::{StandinConfig, StandinUser};

/// A fault answered instead of the next Graph call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// 429, 503, 403, ...
    pub status: u16,
    /// Seconds, sent as Retry-After.
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl Fault {
    pub fn throttled(retry_after: u64) -> Self {
        Fault {
            status: 429,
            retry_after: Some(retry_after),
            code: None,
            message: None,
        }
    }
    pub fn unavailable() -> Self {
        Fault {
            status: 503,
            retry_after: None,
            code: None,
            message: None,
        }
    }
    /// 403 as Graph answers an application without the permission.
    pub fn forbidden() -> Self {
        Fault {
            status: 403,
            retry_after: None,
            code: Some("Authorization_RequestDenied".into()),
            message: Some("Insufficient privileges to complete the operation.".into()),
        }
    }
}

/// A registered passkey, with what a test needs to verify an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPasskey {
    /// The fido2AuthenticationMethod ID.
    pub id: String,
    pub user_id: Uuid,
    pub display_name: String,
    /// base64url.
    pub credential_id: String,
    pub aaguid: Uuid,
    /// Uncompressed SEC1 P-256 public key, hex.
    pub public_key_sec1: String,
    pub created_date_time: String,
}

pub(crate) struct Pending {
    pub user_id: Uuid,
    pub state: RegistrationState,
    pub expires: time::OffsetDateTime,
}

pub(crate) struct Inner {
    pub users: Vec<StandinUser>,
    pub tokens: HashMap<String, Instant>,
    /// Client assertion IDs seen (a jti is accepted once).
    pub used_jti: std::collections::HashSet<String>,
    /// By challenge (base64url).
    pub pending: HashMap<String, Pending>,
    pub passkeys: Vec<StoredPasskey>,
    pub faults: VecDeque<Fault>,
    pub graph_calls: u64,
}

pub struct Tenant {
    pub(crate) config: StandinConfig,
    pub(crate) webauthn: WebauthnCore,
    pub(crate) trust: AttestationCaList,
    pub(crate) client_certificate: Option<crate::assertion::TrustedCertificate>,
    pub(crate) inner: Mutex<Inner>,
}

/// A trust store from PEM roots: with an AAGUID allow-list, each root
/// vouches for those AAGUIDs only; without, for any (blanket allow).
fn trust_store(config: &StandinConfig) -> anyhow::Result<AttestationCaList> {
    let mut cas = serde_json::Map::new();
    for pem in &config.trust_store_pem {
        let der = pem_to_der(pem)?;
        let kid = base64_url(&Sha256::digest(&der));
        let aaguids: serde_json::Map<String, serde_json::Value> = config
            .aaguid_allow_list
            .iter()
            .flatten()
            .map(|a| {
                (
                    a.to_string(),
                    serde_json::json!({ "en": "allowed authenticator", "localised": {} }),
                )
            })
            .collect();
        cas.insert(
            kid,
            serde_json::json!({
                "ca": base64_url(&der),
                "aaguids": aaguids,
                "blanket_allow": config.aaguid_allow_list.is_none(),
            }),
        );
    }
    Ok(serde_json::from_value(serde_json::json!({ "cas": cas }))?)
}

pub(crate) fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use x509_cert::der::{DecodePem, Encode};
    Ok(x509_cert::Certificate::from_pem(pem.trim())?.to_der()?)
}

impl Tenant {
    pub fn new(config: StandinConfig) -> anyhow::Result<Self> {
        if config.trust_store_pem.is_empty() {
            anyhow::bail!("the simulated tenant needs at least one trusted attestation root");
        }
        let trust = trust_store(&config)?;
        let client_certificate = config
            .client_certificate_pem
            .as_deref()
            .map(crate::assertion::TrustedCertificate::from_pem)
            .transpose()?;
        let origin = url_for(&format!("https://{}", config.rp_id))?;
        let webauthn = WebauthnCore::new_unsafe_experts_only(
            &config.rp_name,
            &config.rp_id,
            vec![origin],
            std::time::Duration::from_secs(60),
            Some(false),
            Some(false),
        );
        let inner = Inner {
            users: config.users.clone(),
            tokens: HashMap::new(),
            used_jti: std::collections::HashSet::new(),
            pending: HashMap::new(),
            passkeys: Vec::new(),
            faults: VecDeque::new(),
            graph_calls: 0,
        };
        Ok(Tenant {
            config,
            webauthn,
            trust,
            client_certificate,
            inner: Mutex::new(inner),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_user(&self, user: StandinUser) {
        let mut g = self.lock();
        g.users.retain(|u| u.id != user.id);
        g.users.push(user);
    }

    /// A user by object ID or UPN (case-insensitive), created on first use
    /// when the tenant auto-creates users.
    pub(crate) fn find_user(&self, key: &str) -> Option<StandinUser> {
        let mut g = self.lock();
        let found = g
            .users
            .iter()
            .find(|u| {
                u.id.to_string().eq_ignore_ascii_case(key)
                    || u.user_principal_name.eq_ignore_ascii_case(key)
            })
            .cloned();
        if found.is_none() && self.config.auto_create_users && key.contains('@') {
            let u = StandinUser::new(key, key.split('@').next().unwrap_or(key));
            g.users.push(u.clone());
            return Some(u);
        }
        found
    }

    pub fn passkeys(&self, user: &str) -> Vec<StoredPasskey> {
        let Some(u) = self.find_user(user) else {
            return vec![];
        };
        self.lock()
            .passkeys
            .iter()
            .filter(|p| p.user_id == u.id)
            .cloned()
            .collect()
    }

    pub fn push_fault(&self, f: Fault) {
        self.lock().faults.push_back(f);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn expire_challenges(&self) {
        let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        for p in self.lock().pending.values_mut() {
            p.expires = past;
        }
    }

    pub fn graph_calls(&self) -> u64 {
        self.lock().graph_calls
    }

    /// Bearer tokens the token endpoint has issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens.len()
    }
}

fn url_for(s: &str) -> anyhow::Result<url::Url> {
    Ok(url::Url::parse(s)?)
}

pub(crate) async fn admin_add_user(
    State(t): State<std::sync::Arc<Tenant>>,
    Json(u): Json<StandinUser>,
) -> StatusCode {
    t.add_user(u);
    StatusCode::CREATED
}

pub(crate) async fn admin_passkeys(
    State(t): State<std::sync::Arc<Tenant>>,
    Path(user): Path<String>,
) -> Json<Vec<StoredPasskey>> {
    Json(t.passkeys(&user))
}

pub(crate) async fn admin_push_fault(
    State(t): State<std::sync::Arc<Tenant>>,
    Json(f): Json<Fault>,
) -> StatusCode {
    t.push_fault(f);
    StatusCode::NO_CONTENT
}

pub(crate) async fn admin_clear_faults(State(t): State<std::sync::Arc<Tenant>>) -> StatusCode {
    t.clear_faults();
    StatusCode::NO_CONTENT
}

pub(crate) async fn admin_expire(State(t): State<std::sync::Arc<Tenant>>) -> StatusCode {
    t.expire_challenges();
    StatusCode::NO_CONTENT
}
