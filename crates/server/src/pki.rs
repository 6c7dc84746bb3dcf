//! The embedded certificate authority in the server: created at first start
//! (its private keys sealed under the KEK in the store), its certificates
//! served at `/pki/ca/…` and its CRL at `/pki/crl/issuing.crl` for relying
//! parties (domain controllers, `openssl verify -crl_check`).

use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use der::{Encode, EncodePem};
use keyward_domain::{AuditDraft, AuditOutcome};
use keyward_pki::{EmbeddedCa, EmbeddedCaParts};
use keyward_store::Store;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use keyward_domain::{DevicePolicy, RevocationReason, User};
use keyward_engine::piv::{Certified, GeneratedKey};
use keyward_engine::{Failure, FailureCode, Step};
use keyward_pki::ocsp::{CertificateStatus, OcspQuery, Responder};
use keyward_pki::{CertificateAuthority, LeafRequest};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::secrets::Sealed;

/// The store secret holding the sealed CA material.
const SECRET_NAME: &str = "pki:embedded-ca";

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    name: String,
    root_key: String,
    root_cert: String,
    issuing_key: String,
    issuing_cert: String,
    content_signer_key: String,
    content_signer_cert: String,
}

impl Stored {
    fn from_parts(p: &EmbeddedCaParts) -> Stored {
        Stored {
            name: p.name.clone(),
            root_key: B64.encode(&*p.root_key_pkcs8),
            root_cert: B64.encode(&p.root_cert),
            issuing_key: B64.encode(&*p.issuing_key_pkcs8),
            issuing_cert: B64.encode(&p.issuing_cert),
            content_signer_key: B64.encode(&*p.content_signer_key_pkcs8),
            content_signer_cert: B64.encode(&p.content_signer_cert),
        }
    }

    fn into_parts(self, crl_url: Option<String>) -> anyhow::Result<EmbeddedCaParts> {
        let d = |s: &str| B64.decode(s).map_err(|e| anyhow::anyhow!("stored CA: {e}"));
        Ok(EmbeddedCaParts {
            name: self.name,
            root_key_pkcs8: Zeroizing::new(d(&self.root_key)?),
            root_cert: d(&self.root_cert)?,
            issuing_key_pkcs8: Zeroizing::new(d(&self.issuing_key)?),
            issuing_cert: d(&self.issuing_cert)?,
            content_signer_key_pkcs8: Zeroizing::new(d(&self.content_signer_key)?),
            content_signer_cert: d(&self.content_signer_cert)?,
            crl_url,
        })
    }
}

/// The CA and its current CRL.
pub struct Pki {
    pub ca: EmbeddedCa,
    /// The issuing CA's CRL: when it was signed, at which revocation epoch
    /// of the store (see `Store::revocation_epoch`), and its DER.
    crl: RwLock<Option<(OffsetDateTime, u64, Vec<u8>)>>,
    root_crl: RwLock<Option<(OffsetDateTime, Vec<u8>)>>,
    /// This node's delegated OCSP responder (its key never leaves memory;
    /// a new one is certified before the current one expires).
    responder: RwLock<Option<Arc<Responder>>>,
}

/// How long an OCSP responder certificate is valid, and how long before its
/// end a new one takes over.
const RESPONDER_DAYS: u32 = 30;
const RESPONDER_ROTATE: time::Duration = time::Duration::days(7);
/// An OCSP answer's nextUpdate: a relying party asks again within the hour.
const OCSP_VALIDITY: time::Duration = time::Duration::hours(1);

impl Pki {
    /// Loads the CA from the store, or creates it (first start).
    pub async fn load_or_create(
        store: &Store,
        sealer: &Sealed,
        public_url: &str,
    ) -> anyhow::Result<Arc<Pki>> {
        // Where relying parties find the CRL, the OCSP responder and the
        // issuing CA certificate, written into every certificate issued.
        let crl_url = Some(format!("{public_url}/pki/crl/issuing.crl"));
        let open = |sealed: Vec<u8>| -> anyhow::Result<EmbeddedCa> {
            let plain = Zeroizing::new(sealer.open(SECRET_NAME, &sealed).map_err(|e| {
                anyhow::anyhow!("CA keys: {e} (is this the KEK the CA was created with?)")
            })?);
            let stored: Stored = serde_json::from_slice(&plain)?;
            Ok(EmbeddedCa::from_parts(
                &stored.into_parts(crl_url.clone())?,
            )?)
        };
        // Stores the CA as it is now; another node may have stored its own at
        // the same moment: everyone uses what the store holds then.
        let save = |ca: &EmbeddedCa, action: &str| -> anyhow::Result<_> {
            let plain = Zeroizing::new(serde_json::to_vec(&Stored::from_parts(&ca.to_parts()?))?);
            let audit = AuditDraft {
                actor: "system".into(),
                action: action.into(),
                target: "ca:Keyward Issuing CA".into(),
                outcome: AuditOutcome::Success,
                details: serde_json::json!({}),
            };
            Ok((sealer.seal(SECRET_NAME, &plain), audit))
        };
        let mut ca = match store.get_secret(SECRET_NAME).await? {
            Some(sealed) => open(sealed)?,
            None => {
                let ca =
                    EmbeddedCa::generate("Keyward", crl_url.clone(), OffsetDateTime::now_utc())?;
                let (sealed, audit) = save(&ca, "pki.ca_created")?;
                store.put_secret(SECRET_NAME, &sealed, &audit).await?;
                let stored = store
                    .get_secret(SECRET_NAME)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("CA vanished from the store"))?;
                open(stored)?
            }
        };
        // The issuing CA's certificate names the root's CRL (Windows checks
        // every certificate below the root): certified again, same key,
        // when it names none or another address.
        let root_crl_url = format!("{public_url}/pki/crl/root.crl");
        if ca.issuing_crl_url().as_deref() != Some(root_crl_url.as_str()) {
            ca.reissue_issuing_cert(&root_crl_url)?;
            let (sealed, audit) = save(&ca, "pki.issuing_ca_recertified")?;
            store.put_secret(SECRET_NAME, &sealed, &audit).await?;
            let stored = store
                .get_secret(SECRET_NAME)
                .await?
                .ok_or_else(|| anyhow::anyhow!("CA vanished from the store"))?;
            ca = open(stored)?;
        }
        ca.set_authority_info(
            format!("{public_url}/pki/ocsp"),
            format!("{public_url}/pki/ca/issuing.crt"),
        );
        Ok(Arc::new(Pki {
            ca,
            crl: RwLock::new(None),
            root_crl: RwLock::new(None),
            responder: RwLock::new(None),
        }))
    }

    /// The issuing CA's CRL, from the store: every revoked or held
    /// certificate with its RFC 5280 reason; valid `validity` from its
    /// thisUpdate, signed again at half-life and after each revocation (the
    /// store's revocation epoch: at once on the node that wrote it, through
    /// the change feed on the others). Its number comes from the store: the
    /// same increasing sequence for every node, above the time-based
    /// numbers published before.
    pub async fn crl(&self, store: &Store, validity: time::Duration) -> anyhow::Result<Vec<u8>> {
        let now = OffsetDateTime::now_utc();
        // Read before the revocations: one written meanwhile makes the list
        // built here stale at once.
        let epoch = store.revocation_epoch();
        if let Some((at, built_at, der)) = self.crl.read().expect("CRL lock").as_ref() {
            if now - *at < validity / 2 && *built_at == epoch {
                return Ok(der.clone());
            }
        }
        let revoked = store
            .revocations()
            .await?
            .into_iter()
            .map(|r| {
                Ok(keyward_pki::Revoked {
                    serial: hex::decode(&r.serial)
                        .map_err(|e| anyhow::anyhow!("stored certificate serial: {e}"))?,
                    at: r.at,
                    // Revoked before reasons were stored: the attempt
                    // that used the key ended (cessationOfOperation).
                    reason: Some(
                        r.reason
                            .unwrap_or(RevocationReason::CessationOfOperation)
                            .code(),
                    ),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let number = store
            .next_crl_number("issuing", now.unix_timestamp().max(1))
            .await? as u64;
        let der = self.ca.crl(&revoked, now, now + validity, number)?;
        *self.crl.write().expect("CRL lock") = Some((now, epoch, der.clone()));
        Ok(der)
    }

    /// The root's CRL (it lists no certificate: the issuing CA is
    /// replaced, not revoked), signed again at half-life.
    pub async fn root_crl(
        &self,
        store: &Store,
        validity: time::Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let now = OffsetDateTime::now_utc();
        if let Some((at, der)) = self.root_crl.read().expect("CRL lock").as_ref() {
            if now - *at < validity / 2 {
                return Ok(der.clone());
            }
        }
        let number = store
            .next_crl_number("root", now.unix_timestamp().max(1))
            .await? as u64;
        let der = self.ca.root_crl(now, now + validity, number)?;
        *self.root_crl.write().expect("CRL lock") = Some((now, der.clone()));
        Ok(der)
    }

    /// The OCSP responder, certified anew when none is there or the current
    /// one ends within a week.
    fn responder(&self, now: OffsetDateTime) -> anyhow::Result<Arc<Responder>> {
        if let Some(r) = self.responder.read().expect("responder lock").as_ref() {
            if r.not_after() - now > RESPONDER_ROTATE {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(self.ca.ocsp_responder(now, RESPONDER_DAYS)?);
        *self.responder.write().expect("responder lock") = Some(r.clone());
        Ok(r)
    }

    /// The answer to a DER OCSP request: each certificate's status read from
    /// the store (the same on every node).
    pub async fn ocsp(&self, store: &Store, request: &[u8]) -> anyhow::Result<Vec<u8>> {
        let query = match OcspQuery::parse(request, &self.ca) {
            Ok(q) => q,
            Err(refused) => return Ok(refused.response()),
        };
        let mut statuses = Vec::new();
        for serial in query.serials() {
            let status = match store.certificate_status(&hex::encode(&serial)).await? {
                None => CertificateStatus::Unknown,
                Some(None) => CertificateStatus::Good,
                Some(Some(r)) => CertificateStatus::Revoked {
                    at: r.at,
                    reason: r
                        .reason
                        .unwrap_or(RevocationReason::CessationOfOperation)
                        .code(),
                },
            };
            statuses.push(status);
        }
        let now = OffsetDateTime::now_utc();
        Ok(self
            .responder(now)?
            .respond(&query, &statuses, now, now + OCSP_VALIDITY)?)
    }

    /// Drops the cached CRL: for revocations written behind the store's
    /// back (the benchmark fills the database directly).
    pub fn invalidate_crl(&self) {
        *self.crl.write().expect("CRL lock") = None;
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/pki/ca/{file}", get(ca_file))
        .route("/pki/crl/{file}", get(crl_file))
        .route("/pki/ocsp", axum::routing::post(ocsp_post))
        .route("/pki/ocsp/{*request}", get(ocsp_get))
}

/// OCSP over POST (RFC 6960 A.1): the DER request is the body.
async fn ocsp_post(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    ocsp_answer(&state, &body).await
}

/// OCSP over GET: the DER request, base64 and URL-encoded, is the path.
async fn ocsp_get(State(state): State<AppState>, Path(request): Path<String>) -> Response {
    let text: String = request.chars().filter(|c| !c.is_whitespace()).collect();
    match B64.decode(text.as_bytes()) {
        Ok(der) => ocsp_answer(&state, &der).await,
        Err(_) => ocsp_response(keyward_pki::ocsp::Refused::Malformed.response()),
    }
}

async fn ocsp_answer(state: &AppState, request: &[u8]) -> Response {
    match state.pki.ocsp(&state.store, request).await {
        Ok(der) => ocsp_response(der),
        Err(e) => {
            tracing::warn!(error = %e, "answering an OCSP request");
            // internalError (RFC 6960 4.2.1), unsigned.
            ocsp_response(vec![0x30, 0x03, 0x0A, 0x01, 0x02])
        }
    }
}

fn ocsp_response(der: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response()
}

async fn ca_file(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let ca = &state.pki.ca;
    let (cert, pem) =
        match file.as_str() {
            "root.pem" => (ca.root_cert(), true),
            "root.crt" | "root.der" => (ca.root_cert(), false),
            "issuing.pem" => (ca.issuing_cert(), true),
            "issuing.crt" | "issuing.der" => (ca.issuing_cert(), false),
            "chain.pem" => {
                let mut out = String::new();
                for c in [ca.issuing_cert(), ca.root_cert()] {
                    out.push_str(&c.to_pem(der::pem::LineEnding::LF).unwrap_or_default());
                }
                return (
                    [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
                    out,
                )
                    .into_response();
            }
            _ => return (
                StatusCode::NOT_FOUND,
                "no such CA file; try root.pem, issuing.pem, chain.pem, root.crt, issuing.crt\n",
            )
                .into_response(),
        };
    if pem {
        (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            cert.to_pem(der::pem::LineEnding::LF).unwrap_or_default(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/pkix-cert")],
            cert.to_der().unwrap_or_default(),
        )
            .into_response()
    }
}

async fn crl_file(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let validity = time::Duration::hours(state.config.crl_validity_hours.max(1) as i64);
    let crl = match file.as_str() {
        "issuing.crl" => state.pki.crl(&state.store, validity).await,
        "root.crl" => state.pki.root_crl(&state.store, validity).await,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                "no such CRL; try issuing.crl or root.crl\n",
            )
                .into_response()
        }
    };
    match crl {
        Ok(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Err(e) => crate::error::ApiError::internal("signing the CRL", e).into_response(),
    }
}

/// The CA's certificate for each key (its PKI application's template) and
/// its signature of the CHUID. A template the user cannot fill fails the
/// attempt; a CA that cannot sign is the server's error.
pub fn certify_keys(
    state: &AppState,
    policy: &DevicePolicy,
    user: &User,
    keys: &[GeneratedKey],
    chuid_to_sign: &[u8],
    until: Option<time::OffsetDateTime>,
) -> ApiResult<Result<Certified, Failure>> {
    let now = time::OffsetDateTime::now_utc();
    // A temporary device's end, in whole days from now (at least one).
    let days_left = until.map(|u| {
        let secs = (u - now).whole_seconds().max(1);
        u32::try_from((secs + 86_399) / 86_400).unwrap_or(u32::MAX)
    });
    let mut certificates = Vec::new();
    for k in keys {
        let app = policy
            .pki_applications
            .iter()
            .find(|a| keyward_engine::plan::piv_slot(a.slot) == k.slot)
            .ok_or_else(|| ApiError::internal("certifying", "no PKI application for the slot"))?;
        let req = match LeafRequest::from_template(app, user, None, &k.spki_der) {
            Ok(mut r) => {
                if let Some(d) = days_left {
                    r.validity_days = r.validity_days.min(d);
                }
                r
            }
            Err(e) => {
                return Ok(Err(Failure::new(
                    FailureCode::CertificateTemplate,
                    Step::CertifyKeys,
                    e.to_string(),
                )))
            }
        };
        let issued = state
            .pki
            .ca
            .issue(&req, now)
            .map_err(|e| ApiError::internal("issuing a certificate", e))?;
        certificates.push((k.slot, issued.der));
    }
    let chuid_signature = state
        .pki
        .ca
        .sign_chuid(chuid_to_sign)
        .map_err(|e| ApiError::internal("signing the CHUID", e))?;
    Ok(Ok(Certified {
        certificates,
        chuid_signature,
    }))
}
