//! The FIDO step of an issuance whose device policy has a FIDO application:
//! after the PIV writes, the device's passkey is registered with the
//! policy's Passkey-Enabled Service (Entra ID) through Graph. The CTAP side
//! is `keyward_engine::fido` (pure); this module adds the Graph calls, the
//! PIN answer checks and the passkey credential on record.
//!
//! Batches after the PIV writes: the probe (getInfo, key agreement), the
//! prompts (FIDO PIN or initial PIN, "Verify this device and confirm the
//! registration"), setPIN + token, makeCredential. creationOptions is
//! fetched when the answers arrive; the registration is POSTed when
//! makeCredential answers. A registration Graph refuses leaves nothing on
//! record; a passkey registered but not recorded is deleted again.
//!
//! Shared PIN, Not Displayed, "Change PIN during issuance" = Yes: the
//! registration prompt shows the initial PIN; after the registration a
//! `set_new_pin` prompt batch, then SELECT PIV + CHANGE REFERENCE DATA (one
//! round trip more). A failure or an abandon in between deletes the
//! registered passkey at its service and records it revoked.

use std::collections::BTreeMap;
use std::time::Instant;

use keyward_domain::{DevicePolicy, DeviceType, PasskeyService, User};
use keyward_engine::fido::{
    self, AwaitCredential, AwaitInfo, AwaitPin, AwaitToken, CreationRequest, FidoPlan,
    FidoRegistration, PinSource, Registration,
};
use keyward_engine::piv::{AwaitWrites, PivPlan, Secret};
use keyward_engine::{Batch, Failure, Prompt, PromptKind, Response};
use keyward_graph::{GraphClient, GraphConfig, GraphError, NewFido2Method};
use keyward_store::{Credential, IssuanceSession};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::relay::Next;
use super::session::certificate_credential;
use super::Engine;
use crate::api::store_error;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// The FIDO step's state, sealed with the session.
#[derive(Serialize, Deserialize)]
pub(crate) struct FidoSession {
    stage: Stage,
    service_id: Uuid,
    /// The user as Entra knows them (UPN, else the login).
    entra_user: String,
    /// The passkey's display name (from the FIDO application's template).
    display_name: String,
    /// The PIV certificates of this attempt, recorded with the passkey.
    certificates: Vec<(u8, Vec<u8>)>,
    /// Shared PIN, Not Displayed, "Change PIN during issuance" = Yes: the
    /// initial PIN, which the person replaces after the registration.
    #[serde(default)]
    change_pin_after: Option<Secret>,
}

// One stage at a time, sealed as JSON: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum Stage {
    Info(AwaitInfo),
    Pin(AwaitPin),
    Token(AwaitToken),
    Credential(AwaitCredential),
    /// Registered; the person chooses their device PIN (prompt batch out).
    NewPin(PasskeyRecord),
    /// Registered; the PIN change batch is out.
    PinChanged(PasskeyRecord, Batch),
}

/// What a passkey credential keeps in its `der` column (JSON): enough to
/// find and delete it at Graph again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PasskeyRecord {
    pub passkey_service_id: Uuid,
    pub entra_user: String,
    pub graph_id: String,
    /// base64url.
    pub credential_id: String,
    pub aaguid: String,
}

/// After the PIV writes: starts the FIDO step if the policy has a FIDO
/// application (else `None`: the session is done).
pub(super) fn after_piv(
    policy: &DevicePolicy,
    user: &User,
    plan: &PivPlan,
    device_pin_generated_hidden: bool,
    change_pin_at_end: bool,
    certificates: Vec<(u8, Vec<u8>)>,
) -> ApiResult<Option<Next>> {
    let Some(app) = &policy.fido_application else {
        return Ok(None);
    };
    // Not Displayed with a shared PIN: the registration shows the initial
    // PIN; with "Change PIN during issuance" = Yes the person's own PIN
    // replaces it after the registration.
    let change_pin_after = (app.share_device_pin && change_pin_at_end && plan.final_pin.is_none())
        .then(|| plan.new_pin.clone());
    let device_pin_generated_hidden = device_pin_generated_hidden || change_pin_after.is_some();
    let pin = if app.share_device_pin {
        // The device PIN after the writes: the person's own if they chose
        // one at the end, else the one set at the start.
        let device_pin = plan
            .final_pin
            .clone()
            .unwrap_or_else(|| plan.new_pin.clone());
        if device_pin_generated_hidden {
            PinSource::SharedInitial(device_pin)
        } else {
            PinSource::SharedKnown(device_pin)
        }
    } else {
        PinSource::Unshared
    };
    let display_name = render_name(&app.display_name_template, user, plan);
    let (engine, batch) = FidoRegistration::start(FidoPlan {
        pin,
        cred_protect: app.cred_protect,
        pin_rules: Some(policy.pin_application.clone()),
        // A USB YubiKey waits for a touch; a C4000 in a reader is present.
        touch_sensor: plan.device_type == DeviceType::YubiKey5,
    });
    let session = FidoSession {
        stage: Stage::Info(engine),
        service_id: app.passkey_service_id,
        entra_user: user.upn.clone().unwrap_or_else(|| user.login.clone()),
        display_name,
        certificates,
        change_pin_after,
    };
    Ok(Some(Next::Batch(
        Engine::Fido(Box::new(session)),
        batch,
        vec![],
    )))
}

/// The PIV writes batch, with the FIDO probe (getInfo, key agreement)
/// appended when the policy has a FIDO application: they read nothing
/// secret and change nothing, and save a round trip.
#[allow(clippy::too_many_arguments)]
pub(super) fn with_writes(
    policy: &DevicePolicy,
    user: &User,
    plan: &PivPlan,
    device_pin_generated_hidden: bool,
    change_pin_at_end: bool,
    writes: AwaitWrites,
    mut batch: Batch,
    certificates: Vec<(u8, Vec<u8>)>,
) -> Next {
    let Some(Next::Batch(Engine::Fido(session), probe, _)) = after_piv(
        policy,
        user,
        plan,
        device_pin_generated_hidden,
        change_pin_at_end,
        Vec::new(),
    )
    .ok()
    .flatten() else {
        return Next::Batch(Engine::AwaitWrites(writes), batch, certificates);
    };
    let piv_commands = batch.commands.len();
    batch.commands.extend(probe.commands);
    Next::Batch(
        Engine::AwaitWritesAndFido(writes, piv_commands, session),
        batch,
        certificates,
    )
}

/// The probe's answers (after the PIV writes succeeded): the prompts.
pub(super) fn on_probe(
    mut fido: FidoSession,
    certificates: Vec<(u8, Vec<u8>)>,
    responses: &[Response],
) -> Next {
    fido.certificates = certificates;
    let Stage::Info(e) = std::mem::replace(&mut fido.stage, Stage::Info(placeholder())) else {
        return Next::Failed(Failure::new(
            "internal",
            fido::STEP_PROBE,
            "the FIDO step is not at its probe",
        ));
    };
    match e.on_responses(responses) {
        Err(f) => Next::Failed(f),
        Ok(p) => {
            let prompts = Batch::prompts(p.prompts());
            fido.stage = Stage::Pin(p);
            Next::Batch(Engine::Fido(Box::new(fido)), prompts, vec![])
        }
    }
}

fn render_name(template: &str, user: &User, plan: &PivPlan) -> String {
    let name = template
        .replace("{device_type}", plan.device_type.label())
        .replace("{serial}", &plan.serial.to_string())
        .replace("{display_name}", &user.display_name)
        .replace("{login}", &user.login)
        .replace("{upn}", user.upn.as_deref().unwrap_or(""))
        .replace("{mail}", user.email.as_deref().unwrap_or(""));
    name.chars().take(200).collect()
}

/// The Graph clients the server keeps, by Passkey-Enabled Service: the
/// fingerprint of the configuration each was built from, and the client.
pub type GraphClients =
    std::sync::Mutex<std::collections::HashMap<Uuid, ([u8; 32], std::sync::Arc<GraphClient>)>>;

/// The production Graph client for a Passkey-Enabled Service.
pub(crate) async fn graph_client(
    state: &AppState,
    service_id: Uuid,
) -> ApiResult<std::sync::Arc<GraphClient>> {
    Ok(graph_client_and_service(state, service_id).await?.0)
}

/// What a Graph client is built from: a changed service (URLs, IDs, API
/// version, the sealed secret or key, the certificate) gets a new client.
fn service_fingerprint(service: &PasskeyService) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        service.authority_url.as_bytes(),
        service.tenant_id.as_bytes(),
        service.client_id.as_bytes(),
        service.token_scope.as_bytes(),
        service.graph_url.as_bytes(),
        service.api_version.as_bytes(),
        &service.client_secret.0,
        service
            .client_certificate_pem
            .as_deref()
            .unwrap_or("")
            .as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The client and the service (its challenge timeout and user matching).
/// The client is kept per service, so its token is reused until it expires.
async fn graph_client_and_service(
    state: &AppState,
    service_id: Uuid,
) -> ApiResult<(std::sync::Arc<GraphClient>, PasskeyService)> {
    let service: PasskeyService = state
        .store
        .get_passkey_service(service_id)
        .await
        .map_err(|e| store_error("reading the Passkey-Enabled Service", e))?;
    let fingerprint = service_fingerprint(&service);
    if let Some((seen, client)) = state
        .graph_clients
        .lock()
        .expect("graph clients lock")
        .get(&service.id)
    {
        if *seen == fingerprint {
            return Ok((client.clone(), service));
        }
    }
    let secret = zeroize::Zeroizing::new(
        state
            .sealer
            .open(
                &crate::api::passkey_services::secret_context(service.id),
                &service.client_secret.0,
            )
            .map_err(|e| ApiError::internal("opening the client secret", e))?,
    );
    let secret = std::str::from_utf8(&secret)
        .map_err(|e| ApiError::internal("reading the client secret", e))?;
    let mut config = GraphConfig::new(
        &service.authority_url,
        &service.tenant_id,
        &service.client_id,
        secret,
        &service.token_scope,
        &service.graph_url,
    );
    config.api_version = keyward_graph::ApiVersion::parse(&service.api_version).unwrap_or_default();
    // A certificate credential: the sealed credential is its private key.
    if let Some(cert) = &service.client_certificate_pem {
        config = config
            .with_certificate(cert, secret)
            .map_err(|e| ApiError::internal("the certificate credential", e))?;
    }
    let client = std::sync::Arc::new(
        GraphClient::new(config).map_err(|e| ApiError::internal("the Graph client", e))?,
    );
    state
        .graph_clients
        .lock()
        .expect("graph clients lock")
        .insert(service.id, (fingerprint, client.clone()));
    Ok((client, service))
}

fn graph_failure(step: &str, e: &GraphError) -> Failure {
    Failure::new(e.code(), step, e.to_string())
}

fn creation_request(o: &keyward_graph::CreationOptions) -> Result<CreationRequest, Failure> {
    let pk = &o.public_key;
    let bad = |what: &str| {
        Failure::new(
            "graph_bad_answer",
            fido::STEP_REGISTER,
            format!("creationOptions: {what} is not base64url"),
        )
    };
    Ok(CreationRequest {
        rp_id: pk.rp.id.clone(),
        rp_name: pk.rp.name.clone(),
        user_id: pk.user_id_bytes().map_err(|_| bad("user.id"))?,
        user_name: pk.user.name.clone(),
        user_display_name: pk.user.display_name.clone(),
        challenge: pk.challenge_bytes().map_err(|_| bad("challenge"))?,
        algorithms: pk.pub_key_cred_params.iter().map(|p| p.alg).collect(),
        exclude_credentials: pk.exclude_ids(),
    })
}

/// A new FIDO PIN that breaks a rule is refused with 400 before anything
/// moves (the same prompts stay out).
fn check_new_pin(
    p: &AwaitPin,
    answers: &BTreeMap<String, String>,
    policy: &DevicePolicy,
) -> ApiResult<()> {
    let Some(pin) = answers.get(PromptKind::SetFidoPin.as_str()) else {
        return Ok(());
    };
    let problems = fido::fido_pin_problems(
        pin,
        p.device().min_pin_length,
        Some(&policy.pin_application),
    );
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "fido_pin_rules",
        format!("the FIDO PIN must meet: {}", problems.join("; ")),
    )
    .field(format!("answers.{}", PromptKind::SetFidoPin.as_str()))
    .details(serde_json::json!({ "failed_rules": problems })))
}

/// One relay step of the FIDO step.
pub(super) async fn step(
    state: &AppState,
    s: &IssuanceSession,
    user: &User,
    policy: &DevicePolicy,
    mut fido: FidoSession,
    responses: &[Response],
    answers: &BTreeMap<String, String>,
) -> ApiResult<Next> {
    let stage = std::mem::replace(&mut fido.stage, Stage::Info(placeholder()));
    let batch_next =
        |fido: FidoSession, batch: Batch| Next::Batch(Engine::Fido(Box::new(fido)), batch, vec![]);
    match stage {
        Stage::Info(e) => match e.on_responses(responses) {
            Err(f) => Ok(Next::Failed(f)),
            Ok(p) => {
                let prompts = Batch::prompts(p.prompts());
                fido.stage = Stage::Pin(p);
                Ok(batch_next(fido, prompts))
            }
        },
        Stage::Pin(p) => {
            check_new_pin(&p, answers, policy)?;
            if answers
                .get(PromptKind::ConfirmTouch.as_str())
                .is_some_and(|a| a == "false")
            {
                return Ok(Next::Failed(Failure::new(
                    "declined_by_person",
                    fido::STEP_REGISTER,
                    "the person declined the passkey registration",
                )));
            }
            let (graph, service) = graph_client_and_service(state, fido.service_id).await?;
            // The user as the service matches them (UPN, or an object ID
            // attribute); kept for the registration.
            let Some(entra_user) = service.entra_user(user) else {
                return Ok(Next::Failed(Failure::new(
                    "entra_user_unknown",
                    fido::STEP_REGISTER,
                    format!(
                        "user {} has no value for the attribute {} that holds their Entra object ID",
                        user.login,
                        service.user_id_attribute.as_deref().unwrap_or("")
                    ),
                )));
            };
            fido.entra_user = entra_user;
            let started = Instant::now();
            let timeout = Some(service.challenge_timeout_minutes);
            let options = match graph.creation_options(&fido.entra_user, timeout).await {
                Ok(o) => o,
                Err(e) => return Ok(Next::Failed(graph_failure(fido::STEP_REGISTER, &e))),
            };
            tracing::info!(
                session = %s.id,
                graph_ms = started.elapsed().as_millis() as u64,
                "passkey creationOptions fetched"
            );
            let request = match creation_request(&options) {
                Ok(r) => r,
                Err(f) => return Ok(Next::Failed(f)),
            };
            match p.on_answers(answers, &request) {
                Err(f) => Ok(Next::Failed(f)),
                Ok((t, batch)) => {
                    fido.stage = Stage::Token(t);
                    Ok(batch_next(fido, batch))
                }
            }
        }
        Stage::Token(t) => match t.on_responses(responses) {
            Err(f) => Ok(Next::Failed(f)),
            Ok((c, batch)) => {
                fido.stage = Stage::Credential(c);
                Ok(batch_next(fido, batch))
            }
        },
        Stage::Credential(c) => {
            let reg = match c.on_responses(responses) {
                Err(f) => return Ok(Next::Failed(f)),
                Ok(r) => r,
            };
            register(state, s, fido, reg).await
        }
        Stage::NewPin(record) => {
            // Checked against the PIN rules before the session moved.
            let (Some(initial), Some(pin)) = (
                fido.change_pin_after.as_ref(),
                answers.get(PromptKind::SetNewPin.as_str()),
            ) else {
                return Err(ApiError::internal("relaying", "no PIN to change"));
            };
            match fido::change_shared_pin(initial, pin) {
                Err(f) => Ok(passkey_failed(state, &record, f).await),
                Ok(batch) => {
                    fido.stage = Stage::PinChanged(record, batch.clone());
                    Ok(batch_next(fido, batch))
                }
            }
        }
        Stage::PinChanged(record, sent) => match fido::on_pin_changed(&sent, responses) {
            Err(f) => Ok(passkey_failed(state, &record, f).await),
            Ok(()) => Ok(Next::Done(credentials(s, fido.certificates, &record)?)),
        },
    }
}

/// The attempt fails after its passkey was registered: the passkey is
/// deleted at its service (compensation); the relay records it revoked
/// ([`registered_passkey`]).
async fn passkey_failed(state: &AppState, record: &PasskeyRecord, f: Failure) -> Next {
    compensate(state, std::slice::from_ref(record)).await;
    Next::Failed(f)
}

/// The passkey a FIDO step registered and has not yet recorded (the
/// device PIN change after the registration is still to come).
pub(super) fn registered_passkey(engine: &Engine) -> Option<PasskeyRecord> {
    match engine {
        Engine::Fido(f) => match &f.stage {
            Stage::NewPin(r) | Stage::PinChanged(r, _) => Some(r.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The passkey credential on record (revoked at `revoked_at`, if given).
pub(super) fn passkey_credential(
    s: &IssuanceSession,
    record: &PasskeyRecord,
    revoked_at: Option<time::OffsetDateTime>,
) -> Credential {
    Credential {
        id: Uuid::new_v4(),
        device_id: s.device_id,
        session_id: s.id,
        kind: "passkey".into(),
        slot: Some(format!("aaguid:{}", record.aaguid)),
        serial: record.graph_id.clone(),
        not_after: None,
        der: Some(serde_json::to_vec(record).expect("a record serialises")),
        created_at: time::OffsetDateTime::now_utc(),
        revoked_at,
    }
}

/// The session's credentials: the PIV certificates and the passkey.
fn credentials(
    s: &IssuanceSession,
    certificates: Vec<(u8, Vec<u8>)>,
    record: &PasskeyRecord,
) -> ApiResult<Vec<Credential>> {
    let mut creds: Vec<Credential> = Vec::new();
    for (slot, der) in certificates {
        creds.push(certificate_credential(s, slot, der, None)?);
    }
    creds.push(passkey_credential(s, record, None));
    Ok(creds)
}

/// A stand-in for the stage while it is taken out (never sealed).
fn placeholder() -> AwaitInfo {
    FidoRegistration::start(FidoPlan {
        pin: PinSource::Unshared,
        cred_protect: 1,
        pin_rules: None,
        touch_sensor: false,
    })
    .0
}

/// POSTs the registration; on success the session ends with the PIV
/// certificates and the passkey on record.
async fn register(
    state: &AppState,
    s: &IssuanceSession,
    fido: FidoSession,
    reg: Registration,
) -> ApiResult<Next> {
    let graph = graph_client(state, fido.service_id).await?;
    let body = NewFido2Method::new(
        fido.display_name.clone(),
        keyward_graph::PublicKeyCredential {
            id: fido::b64url(&reg.credential_id),
            response: keyward_graph::AttestationResponse {
                client_data_json: fido::b64url(&reg.client_data_json),
                attestation_object: fido::b64url(&reg.attestation_object),
            },
            client_extension_results: Some(serde_json::json!({})),
        },
    );
    let started = Instant::now();
    let method = match graph.register(&fido.entra_user, &body).await {
        Ok(m) => m,
        Err(e) => return Ok(Next::Failed(graph_failure(fido::STEP_REGISTER, &e))),
    };
    tracing::info!(
        session = %s.id,
        graph_ms = started.elapsed().as_millis() as u64,
        "passkey registered with the Passkey-Enabled Service"
    );
    let aaguid = Uuid::from_bytes(reg.aaguid).to_string();
    let record = PasskeyRecord {
        passkey_service_id: fido.service_id,
        entra_user: fido.entra_user.clone(),
        graph_id: method.id.clone(),
        credential_id: fido::b64url(&reg.credential_id),
        aaguid: method.aa_guid.clone().unwrap_or(aaguid),
    };
    if fido.change_pin_after.is_some() {
        // The person now chooses their device PIN; the last batch sets it.
        let prompts = Batch::prompts(vec![Prompt::new(
            PromptKind::SetNewPin,
            fido::STEP_SET_NEW_PIN,
            "Choose the PIN of your device (it also unlocks the passkey)",
        )]);
        let mut fido = fido;
        fido.stage = Stage::NewPin(record);
        return Ok(Next::Batch(Engine::Fido(Box::new(fido)), prompts, vec![]));
    }
    Ok(Next::Done(credentials(s, fido.certificates, &record)?))
}

/// Deletes at Graph every passkey on record for a device and not revoked
/// (a recycled device). A failure is logged: the credential is revoked on
/// record anyway, and an operator can delete the passkey in Entra ID.
pub(crate) async fn forget_passkeys(state: &AppState, device_id: Uuid) {
    let credentials = match state.store.device_credentials(device_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "reading the device's passkeys to delete them");
            return;
        }
    };
    for c in credentials.iter().filter(|c| c.revoked_at.is_none()) {
        let Some(record) = passkey_record(c) else {
            continue;
        };
        match delete_passkey(state, &record).await {
            Ok(()) => {
                tracing::info!(graph_id = %record.graph_id, "passkey deleted at the Passkey-Enabled Service")
            }
            Err(e) => {
                tracing::warn!(graph_id = %record.graph_id, error = %e, "the passkey could not be deleted at the Passkey-Enabled Service")
            }
        }
    }
}

/// Deletes passkeys registered in a step whose end could not be recorded.
pub(crate) async fn compensate(state: &AppState, records: &[PasskeyRecord]) {
    for r in records {
        match delete_passkey(state, r).await {
            Ok(()) => tracing::info!(graph_id = %r.graph_id, "unrecorded passkey deleted again"),
            Err(e) => {
                tracing::warn!(graph_id = %r.graph_id, error = %e, "an unrecorded passkey could not be deleted")
            }
        }
    }
}

/// The passkey record of a credential of kind `passkey`.
pub(crate) fn passkey_record(c: &Credential) -> Option<PasskeyRecord> {
    if c.kind != "passkey" {
        return None;
    }
    serde_json::from_slice(c.der.as_deref()?).ok()
}

/// Compensation: deletes a registered passkey at Graph (a cancelled or
/// failed attempt, a recycled device). Already gone counts as done. The
/// error is a message without secrets.
pub(crate) async fn delete_passkey(state: &AppState, record: &PasskeyRecord) -> Result<(), String> {
    let graph = graph_client(state, record.passkey_service_id)
        .await
        .map_err(|_| "the Passkey-Enabled Service cannot be used".to_string())?;
    graph
        .delete(&record.entra_user, &record.graph_id)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The policy's FIDO application shares the device PIN.
pub(super) fn shares_device_pin(policy: &DevicePolicy) -> bool {
    policy
        .fido_application
        .as_ref()
        .is_some_and(|a| a.share_device_pin)
}
