//! Issuance sessions on the server: Add Device for a user starts one, the
//! relay endpoints carry its batches to the client next to the device and
//! back, and the engine (`keyward-engine`) decides every device command.
//!
//! A session is durable: after each step its engine state (which holds the
//! PIN, PUK and management keys) is sealed under the KEK and written with the
//! session's sequence number, so a restarted server, or another node on the
//! same PostgreSQL, continues it; a replayed or out-of-order result is refused.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{
    AuditDraft, AuditOutcome, DeviceState, Serial, StateChange, StateReason, UserStatus,
};
use keyward_engine::knowledge::DeviceSecrets;
use keyward_engine::piv::{
    AwaitKeys, AwaitWitness, AwaitWrites, Certified, PivIssuance, PivPlan, Secret,
};
use keyward_engine::plan::{initial_pin, piv_plan, random_puk, PlanSecrets};
use keyward_engine::{Batch, Channel, Failure, Response};
use keyward_pki::{CertificateAuthority, LeafRequest};
use keyward_proto::{RelayBatch, RelayCommand, RelayResult, RELAY_PROTOCOL_VERSION};
use keyward_store::{Credential, IssuanceSession, IssuanceUpdate};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(status))
        .routes(routes!(current_batch))
        .routes(routes!(relay))
        .routes(routes!(cancel))
        .routes(routes!(retry))
}

/// The secret from which per-device management keys are derived.
const MASTER_KEY_SECRET: &str = "piv:management-key-master";

/// Add Device for a user: the request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartIssuance {
    /// The user's login.
    pub user: String,
    /// The device policy's name.
    pub policy: String,
    /// The device's serial number (decimal).
    pub serial: String,
    /// The PIN (display modes Displayed and Disguised).
    pub pin: Option<String>,
    /// The PIN again (Disguised).
    pub confirm_pin: Option<String>,
    /// "Action Type": `issue` (the default: issue now) or `assign` (bind the
    /// device to the user with the policy; issuance completes later).
    #[serde(default)]
    pub action: Option<String>,
}

/// A session as the API shows it (no secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionStatus {
    pub session_id: String,
    pub serial: String,
    pub user: String,
    pub policy: String,
    /// `running`, `issued`, `failed`, `cancelled`.
    pub status: String,
    pub step: String,
    pub seq: i64,
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    #[schema(value_type = Vec<Object>)]
    pub credentials: Vec<Credential>,
}

/// The engine's state between round trips, sealed in the session row.
#[derive(Serialize, Deserialize)]
enum Engine {
    AwaitWitness(AwaitWitness),
    AwaitKeys(AwaitKeys),
    AwaitWrites(AwaitWrites),
    Finished,
}

#[derive(Serialize, Deserialize)]
struct SessionData {
    engine: Engine,
    /// The batch out now (sent again on request after a dropped connection).
    batch: Batch,
    user_login: String,
    policy_name: String,
    serial: u64,
    /// A PIN Keyward generated (Not Displayed): kept for Get Initial PIN.
    #[serde(default)]
    initial_pin: Option<Secret>,
    /// The attempt under way or failed (for Retry); dropped when the session ends.
    #[serde(default)]
    attempt: Option<Attempt>,
}

/// What a retry needs: the plan, what the device's secrets are now, and the
/// certificates issued in this attempt that are not on record yet (revoked
/// if the attempt fails).
#[derive(Clone, Serialize, Deserialize)]
struct Attempt {
    plan: PivPlan,
    known: DeviceSecrets,
    #[serde(default)]
    certificates: Vec<(u8, Vec<u8>)>,
}

fn seal_context(id: Uuid) -> String {
    format!("issuance:{id}")
}

fn seal(state: &AppState, id: Uuid, data: &SessionData) -> Vec<u8> {
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(data).expect("session data serialises"));
    state.sealer.seal(&seal_context(id), &plain)
}

fn unseal(state: &AppState, s: &IssuanceSession) -> ApiResult<SessionData> {
    let plain = zeroize::Zeroizing::new(
        state
            .sealer
            .open(&seal_context(s.id), &s.sealed_state)
            .map_err(|e| ApiError::internal("opening the session state", e))?,
    );
    serde_json::from_slice(&plain).map_err(|e| ApiError::internal("reading the session state", e))
}

/// The master key for per-device management keys, created on first use.
async fn master_key(state: &AppState) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
    let open = |sealed: Vec<u8>| {
        state
            .sealer
            .open(MASTER_KEY_SECRET, &sealed)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ApiError::internal("opening the management-key master key", e))
    };
    if let Some(sealed) = state
        .store
        .get_secret(MASTER_KEY_SECRET)
        .await
        .map_err(|e| store_error("reading the master key", e))?
    {
        return open(sealed);
    }
    let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    let draft = AuditDraft {
        actor: "system".into(),
        action: "pki.master_key_created".into(),
        target: "secret:piv-management-key-master".into(),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    };
    state
        .store
        .put_secret(
            MASTER_KEY_SECRET,
            &state.sealer.seal(MASTER_KEY_SECRET, &key),
            &draft,
        )
        .await
        .map_err(|e| store_error("storing the master key", e))?;
    // Several nodes may race: use what the store holds.
    let sealed = state
        .store
        .get_secret(MASTER_KEY_SECRET)
        .await
        .map_err(|e| store_error("reading the master key", e))?
        .ok_or_else(|| ApiError::internal("reading the master key", "vanished"))?;
    open(sealed)
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn relay_batch(id: Uuid, seq: i64, status: &str, batch: &Batch) -> RelayBatch {
    RelayBatch {
        protocol: RELAY_PROTOCOL_VERSION,
        session_id: id.to_string(),
        seq: seq as u64,
        commands: batch
            .commands
            .iter()
            .map(|c| RelayCommand {
                channel: match c.channel {
                    Channel::Piv => "piv".into(),
                    Channel::Ctap => "ctap".into(),
                },
                bytes: hex_lower(&c.bytes),
                expect: c.expect.iter().map(|sw| format!("{sw:04x}")).collect(),
                step: c.step.clone(),
                secret: c.secret,
            })
            .collect(),
        prompts: vec![],
        state: status.into(),
        step: batch
            .commands
            .first()
            .map(|c| c.step.clone())
            .unwrap_or_default(),
    }
}

/// Add Device for a user, action "Issue Device": checks everything before
/// the device is touched, then returns the first batch to relay.
#[utoipa::path(post, path = "/issuance", tag = "issuance",
    request_body = StartIssuance,
    responses((status = 201, body = RelayBatch, description = "Issue Device: the first batch; Assign Device: {serial, state: assigned, user, policy}"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesIssue>,
    ApiJson(req): ApiJson<StartIssuance>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let serial = Serial::parse("serial", &req.serial).map_err(invalid)?;
    let device = found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
        .ok_or_else(|| ApiError::not_found("device").field("serial"))?;
    let assign = match req.action.as_deref() {
        None | Some("issue") => false,
        Some("assign") => true,
        Some(other) => {
            return Err(invalid(keyward_domain::ValidationError::unknown_value(
                "action",
                other,
                &["issue", "assign"],
            )));
        }
    };
    let user = crate::api::users::load(&state, &req.user).await?;
    if user.status != UserStatus::Active {
        return Err(ApiError::bad_request("user_not_active", "the user is disabled").field("user"));
    }
    let policy = crate::api::policies::load(&state, &req.policy).await?;
    match device.state {
        DeviceState::Available => {}
        // Assigned earlier ("Assign Device"): issuance completes it, for that
        // user and with that policy only.
        DeviceState::Assigned
            if !assign
                && device.assigned_user == Some(user.id)
                && device.device_policy == Some(policy.id) => {}
        DeviceState::Assigned => {
            return Err(ApiError::conflict(
                "device_assigned",
                format!(
                    "device {} is assigned (to another user, or with another policy, or already)",
                    device.serial
                ),
            )
            .field("serial"))
        }
        _ => {
            return Err(ApiError::conflict(
                "device_not_available",
                format!(
                    "device {} is {} ({}), not available",
                    device.serial,
                    device.state.label(),
                    device.reason.map(|r| r.as_str()).unwrap_or("-")
                ),
            )
            .field("serial"))
        }
    }
    policy.check_device(&device).map_err(invalid)?;
    if assign {
        let change = StateChange {
            to: DeviceState::Assigned,
            reason: None,
            assigned_user: Some(user.id),
            device_policy: Some(policy.id),
            note: Some("Assign Device".into()),
        };
        let draft = audit(
            &caller,
            "device.assign",
            format!("device:{}", device.serial),
            serde_json::json!({ "user": user.login, "policy": policy.name }),
        );
        state
            .store
            .change_device_state(device.id, device.version, &change, &draft)
            .await
            .map_err(|e| store_error("assigning the device", e))?;
        let body = serde_json::json!({ "serial": device.serial.to_string(), "state": "assigned", "user": user.login, "policy": policy.name });
        return Ok((StatusCode::CREATED, Json(body)));
    }
    if policy.fido_application.is_some() {
        return Err(ApiError::bad_request(
            "not_supported",
            "passkey registration during issuance is not available yet; choose a policy without a FIDO application",
        )
        .field("policy"));
    }
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    let mut rng = rand::rngs::OsRng;
    let pin = initial_pin(
        settings.initial_pin_display_mode,
        &policy.pin_application,
        req.pin.as_deref(),
        req.confirm_pin.as_deref(),
        &mut rng,
    )
    .map_err(invalid)?;
    if pin.generated && settings.change_pin_during_issuance {
        // Setting a new PIN at the end of issuance is a prompt of the relay,
        // which the agent and the portal bring.
        return Err(ApiError::bad_request(
            "not_supported",
            "Not Displayed with \"Change PIN during issuance\" = Yes needs the PIN prompt at the end of issuance, which is not available yet; set change_pin_during_issuance to no (the user then uses Get Initial PIN)",
        ));
    }
    let initial_pin = pin.generated.then(|| pin.pin.clone());
    let master = master_key(&state).await?;
    let mut guid = [0u8; 16];
    rng.fill_bytes(&mut guid);
    let expiration = (time::OffsetDateTime::now_utc() + time::Duration::days(5 * 365)).date();
    let plan = piv_plan(
        &policy,
        &device,
        PlanSecrets {
            pin: pin.pin,
            puk: random_puk(&mut rng),
            master_key: &master,
            chuid_guid: guid,
            credential_number: rng.next_u32() % 1_000_000,
            expiration: format!(
                "{:04}{:02}{:02}",
                expiration.year(),
                expiration.month() as u8,
                expiration.day()
            ),
        },
    )
    .map_err(invalid)?;
    let attempt = Attempt {
        known: DeviceSecrets::from_plan(&plan),
        plan: plan.clone(),
        certificates: vec![],
    };
    let (engine, batch) = PivIssuance::start(plan);
    let id = Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let data = SessionData {
        engine: Engine::AwaitWitness(engine),
        batch: batch.clone(),
        user_login: user.login.clone(),
        policy_name: policy.name.clone(),
        serial: device.serial.0,
        initial_pin,
        attempt: Some(attempt),
    };
    let session = IssuanceSession {
        id,
        device_id: device.id,
        user_id: user.id,
        policy_id: policy.id,
        action: "issue".into(),
        status: "running".into(),
        step: batch.commands[0].step.clone(),
        seq: 1,
        sealed_state: seal(&state, id, &data),
        error: None,
        created_by: caller.actor(),
        created_at: now,
        updated_at: now,
    };
    let change = StateChange {
        to: DeviceState::InProduction,
        reason: None,
        assigned_user: Some(user.id),
        device_policy: Some(policy.id),
        note: Some(format!("issuance session {id}")),
    };
    let draft = audit(
        &caller,
        "issuance.start",
        format!("device:{}", device.serial),
        serde_json::json!({ "session": id, "user": user.login, "policy": policy.name }),
    );
    state
        .store
        .start_issuance(&session, device.version, &change, &draft)
        .await
        .map_err(|e| store_error("starting the issuance", e))?;
    Ok((
        StatusCode::CREATED,
        Json(
            serde_json::to_value(relay_batch(id, 1, "running", &batch))
                .expect("a batch serialises"),
        ),
    ))
}

async fn load(state: &AppState, id: &str) -> ApiResult<IssuanceSession> {
    let id = Uuid::parse_str(id).map_err(|_| {
        ApiError::bad_request("id_invalid", "session id must be a UUID").field("id")
    })?;
    state
        .store
        .get_issuance(id)
        .await
        .map_err(|e| store_error("reading the session", e))
}

/// A session's state, step and credentials.
#[utoipa::path(get, path = "/issuance/{id}", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = SessionStatus), (status = 404, body = ErrorBody)))]
async fn status(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesIssue>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionStatus>> {
    let s = load(&state, &id).await?;
    let data = unseal(&state, &s)?;
    let credentials = state
        .store
        .device_credentials(s.device_id)
        .await
        .map_err(|e| store_error("reading credentials", e))?
        .into_iter()
        .filter(|c| c.session_id == s.id)
        .collect();
    Ok(Json(SessionStatus {
        session_id: s.id.to_string(),
        serial: data.serial.to_string(),
        user: data.user_login,
        policy: data.policy_name,
        status: s.status,
        step: s.step,
        seq: s.seq,
        error: s.error.and_then(|e| serde_json::from_str(&e).ok()),
        credentials,
    }))
}

/// The batch out now (idempotent: fetch it again after a dropped connection).
#[utoipa::path(get, path = "/issuance/{id}/batch", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = RelayBatch), (status = 404, body = ErrorBody)))]
async fn current_batch(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesIssue>,
    Path(id): Path<String>,
) -> ApiResult<Json<RelayBatch>> {
    let s = load(&state, &id).await?;
    let data = unseal(&state, &s)?;
    Ok(Json(relay_batch(s.id, s.seq, &s.status, &data.batch)))
}

fn parse_responses(r: &RelayResult) -> ApiResult<Vec<Response>> {
    let bad = |i: usize, what: &str| {
        ApiError::bad_request("bad_response", format!("response {i}: {what}"))
            .field(format!("responses[{i}]"))
    };
    r.responses
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let data = hex::decode(&x.data).map_err(|_| bad(i, "data is not hex"))?;
            let sw = u16::from_str_radix(&x.sw, 16)
                .map_err(|_| bad(i, "sw is not a 4-digit hex status word"))?;
            if x.sw.len() != 4 {
                return Err(bad(i, "sw is not a 4-digit hex status word"));
            }
            Ok(Response { data, sw })
        })
        .collect()
}

/// A certificate put on (or, for `revoked_at`, taken back from) the device.
fn certificate_credential(
    s: &IssuanceSession,
    slot: u8,
    der: Vec<u8>,
    revoked_at: Option<time::OffsetDateTime>,
) -> ApiResult<Credential> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|e| ApiError::internal("reading a certificate", e))?;
    let tbs = &cert.tbs_certificate;
    Ok(Credential {
        id: Uuid::new_v4(),
        device_id: s.device_id,
        session_id: s.id,
        kind: "certificate".into(),
        slot: Some(format!("{slot:02x}")),
        serial: hex_lower(tbs.serial_number.as_bytes()),
        not_after: Some(time::OffsetDateTime::from(
            tbs.validity.not_after.to_system_time(),
        )),
        der: Some(der),
        created_at: time::OffsetDateTime::now_utc(),
        revoked_at,
    })
}

/// Where a relay step leads.
enum Next {
    /// The next state and batch, and certificates issued on the way.
    Batch(Engine, Batch, Vec<(u8, Vec<u8>)>),
    Done(Vec<Credential>),
    Failed(Failure),
}

fn step_engine(
    state: &AppState,
    s: &IssuanceSession,
    user: &keyward_domain::User,
    policy: &keyward_domain::DevicePolicy,
    data: SessionData,
    responses: &[Response],
) -> ApiResult<Next> {
    Ok(match data.engine {
        Engine::AwaitWitness(e) => match e.on_responses(responses) {
            Ok((next, batch)) => Next::Batch(Engine::AwaitKeys(next), batch, vec![]),
            Err(f) => Next::Failed(f),
        },
        Engine::AwaitKeys(e) => match e.on_responses(responses) {
            Err(f) => Next::Failed(f),
            Ok(await_certs) => {
                // Certify the device's keys now: no round trip.
                let now = time::OffsetDateTime::now_utc();
                let mut certificates = Vec::new();
                for k in await_certs.keys() {
                    let app = policy
                        .pki_applications
                        .iter()
                        .find(|a| keyward_engine::plan::piv_slot(a.slot) == k.slot)
                        .ok_or_else(|| {
                            ApiError::internal("certifying", "no PKI application for the slot")
                        })?;
                    let req = match LeafRequest::from_template(app, user, None, &k.spki_der) {
                        Ok(r) => r,
                        Err(e) => {
                            return Ok(Next::Failed(Failure::new(
                                "certificate_template",
                                "certify keys",
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
                let to_sign = match await_certs.chuid_to_sign() {
                    Ok(c) => c,
                    Err(f) => return Ok(Next::Failed(f)),
                };
                let chuid_signature = state
                    .pki
                    .ca
                    .sign_chuid(&to_sign)
                    .map_err(|e| ApiError::internal("signing the CHUID", e))?;
                match await_certs.with_certificates(Certified {
                    certificates: certificates.clone(),
                    chuid_signature,
                }) {
                    Ok((next, batch)) => {
                        Next::Batch(Engine::AwaitWrites(next), batch, certificates)
                    }
                    Err(f) => Next::Failed(f),
                }
            }
        },
        Engine::AwaitWrites(e) => match e.on_responses(responses) {
            Err(f) => Next::Failed(f),
            Ok(done) => Next::Done(
                done.certificates
                    .into_iter()
                    .map(|(slot, der)| certificate_credential(s, slot, der, None))
                    .collect::<ApiResult<_>>()?,
            ),
        },
        Engine::Finished => {
            return Err(ApiError::conflict(
                "session_finished",
                "the session has ended",
            ))
        }
    })
}

/// The client's responses to batch `seq`; answers with the next batch, or
/// the end of the session (`issued` or `failed`).
#[utoipa::path(post, path = "/issuance/{id}/relay", tag = "issuance", params(("id" = String, Path)),
    request_body = RelayResult,
    responses((status = 200, body = RelayBatch), (status = 409, body = ErrorBody)))]
async fn relay(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesIssue>,
    Path(id): Path<String>,
    ApiJson(result): ApiJson<RelayResult>,
) -> ApiResult<Json<RelayBatch>> {
    if result.protocol != RELAY_PROTOCOL_VERSION {
        return Err(ApiError::bad_request(
            "protocol_version",
            format!(
                "relay protocol {} is not supported; this server speaks {RELAY_PROTOCOL_VERSION}",
                result.protocol
            ),
        ));
    }
    let s = load(&state, &id).await?;
    if result.session_id != s.id.to_string() {
        return Err(
            ApiError::bad_request("session_mismatch", "session_id differs from the URL")
                .field("session_id"),
        );
    }
    if s.status != "running" {
        return Err(ApiError::conflict(
            "session_not_running",
            format!("the session is {}", s.status),
        ));
    }
    if result.seq as i64 != s.seq {
        return Err(ApiError::conflict(
            "sequence_mismatch",
            format!(
                "the session is at batch {}, this result is for batch {}: fetch the current batch",
                s.seq, result.seq
            ),
        )
        .field("seq"));
    }
    let responses = parse_responses(&result)?;
    let data = unseal(&state, &s)?;
    let user = state
        .store
        .get_user(s.user_id)
        .await
        .map_err(|e| store_error("reading the user", e))?;
    let policy = state
        .store
        .get_policy(s.policy_id)
        .await
        .map_err(|e| store_error("reading the policy", e))?;
    let device = state
        .store
        .get_device(s.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let (user_login, policy_name, serial) = (
        data.user_login.clone(),
        data.policy_name.clone(),
        data.serial,
    );
    let initial_pin = data.initial_pin.clone();
    let mut attempt = data
        .attempt
        .clone()
        .ok_or_else(|| ApiError::internal("relaying", "a running session without its attempt"))?;
    attempt.known.after_batch(
        &attempt.plan,
        &data.batch,
        &responses,
        result.transport_error.is_some(),
    );
    let next = step_engine(&state, &s, &user, &policy, data, &responses);
    let next_seq = s.seq + 1;
    let target = format!("device:{serial}");
    match next? {
        Next::Batch(engine, batch, issued) => {
            attempt.certificates.extend(issued);
            let step = batch
                .commands
                .first()
                .map(|c| c.step.clone())
                .unwrap_or_default();
            let data = SessionData {
                engine,
                batch: batch.clone(),
                user_login,
                policy_name,
                serial,
                initial_pin,
                attempt: Some(attempt),
            };
            let update = IssuanceUpdate {
                status: "running".into(),
                step,
                seq: next_seq,
                sealed_state: seal(&state, s.id, &data),
                error: None,
            };
            let draft = audit(
                &caller,
                "issuance.step",
                target,
                serde_json::json!({ "session": s.id, "batch": next_seq }),
            );
            state
                .store
                .advance_issuance(s.id, s.seq, &update, None, &[], &draft)
                .await
                .map_err(|e| store_error("saving the session", e))?;
            Ok(Json(relay_batch(s.id, next_seq, "running", &batch)))
        }
        Next::Done(creds) => {
            if let Some(pin) = &initial_pin {
                crate::initial_pin::keep(&state, &device, s.user_id, pin, &caller).await?;
            }
            let draft = audit(
                &caller,
                "issuance.complete",
                target,
                serde_json::json!({ "session": s.id, "credentials": creds.len() }),
            );
            let ending = Ending {
                status: "issued",
                step: "done".into(),
                error: None,
                device: StateChange {
                    to: DeviceState::Issued,
                    reason: None,
                    assigned_user: None,
                    device_policy: None,
                    note: Some(format!("issuance session {}", s.id)),
                },
                credentials: creds,
                audit: draft,
            };
            end_session(
                &state,
                &s,
                &device,
                (user_login, policy_name, serial),
                ending,
                None,
            )
            .await
        }
        Next::Failed(f) => {
            // The attempt ends; the device is Produced (Failed) and can be cancelled or recycled.
            let report = serde_json::json!({
                "code": f.code, "step": f.step, "sw": f.sw.map(|sw| format!("{sw:04X}")), "message": f.message,
                "session": s.id, "at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            });
            let mut draft = audit(
                &caller,
                "issuance.fail",
                target,
                serde_json::json!({ "session": s.id, "code": f.code, "step": f.step }),
            );
            draft.outcome = AuditOutcome::Failure;
            attempt.known.learn_from_failure(&f);
            // Certificates issued in this attempt are revoked: keys are
            // generated anew on a retry.
            let now = time::OffsetDateTime::now_utc();
            let revoked: Vec<Credential> = std::mem::take(&mut attempt.certificates)
                .into_iter()
                .map(|(slot, der)| certificate_credential(&s, slot, der, Some(now)))
                .collect::<ApiResult<_>>()?;
            let any_revoked = !revoked.is_empty();
            let ending = Ending {
                status: "failed",
                step: f.step.clone(),
                error: Some(report.to_string()),
                device: StateChange {
                    to: DeviceState::Produced,
                    reason: Some(StateReason::Failed),
                    assigned_user: None,
                    device_policy: None,
                    note: Some(format!("issuance failed at {}", f.step)),
                },
                credentials: revoked,
                audit: draft,
            };
            let answer = end_session(
                &state,
                &s,
                &device,
                (user_login, policy_name, serial),
                ending,
                Some((attempt, initial_pin)),
            )
            .await;
            if any_revoked {
                state.pki.invalidate_crl();
            }
            answer
        }
    }
}

/// How a session ends: its status, the device's change and what to record.
struct Ending {
    status: &'static str,
    step: String,
    error: Option<String>,
    device: StateChange,
    credentials: Vec<Credential>,
    audit: AuditDraft,
}

/// Writes the end of a session (its secrets dropped from the sealed state),
/// the device's change and the credentials, in one transaction.
async fn end_session(
    state: &AppState,
    s: &IssuanceSession,
    device: &keyward_domain::Device,
    (user_login, policy_name, serial): (String, String, u64),
    ending: Ending,
    keep: Option<(Attempt, Option<Secret>)>,
) -> ApiResult<Json<RelayBatch>> {
    // A failed attempt keeps what a retry needs; an issued session keeps no secret.
    let (attempt, initial_pin) = match keep {
        Some((a, pin)) => (Some(a), pin),
        None => (None, None),
    };
    let data = SessionData {
        engine: Engine::Finished,
        batch: Batch::default(),
        user_login,
        policy_name,
        serial,
        initial_pin,
        attempt,
    };
    let update = IssuanceUpdate {
        status: ending.status.into(),
        step: ending.step,
        seq: s.seq + 1,
        sealed_state: seal(state, s.id, &data),
        error: ending.error,
    };
    state
        .store
        .advance_issuance(
            s.id,
            s.seq,
            &update,
            Some((device.id, device.version, &ending.device)),
            &ending.credentials,
            &ending.audit,
        )
        .await
        .map_err(|e| store_error("ending the issuance session", e))?;
    Ok(Json(relay_batch(
        s.id,
        s.seq + 1,
        ending.status,
        &Batch::default(),
    )))
}

/// Cancel a failed attempt: the device is no longer assigned to the user
/// (Produced, reason Unassigned) and can be recycled.
#[utoipa::path(post, path = "/issuance/{id}/cancel", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = SessionStatus), (status = 409, body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    Allowed(caller, a): Allowed<perm::DevicesIssue>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionStatus>> {
    let s = load(&state, &id).await?;
    if s.status != "failed" {
        return Err(ApiError::conflict(
            "session_not_failed",
            format!(
                "only a failed attempt can be cancelled; this session is {}",
                s.status
            ),
        ));
    }
    let device = state
        .store
        .get_device(s.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let mut data = unseal(&state, &s)?;
    data.initial_pin = None;
    data.attempt = None;
    let update = IssuanceUpdate {
        status: "cancelled".into(),
        step: s.step.clone(),
        seq: s.seq + 1,
        sealed_state: seal(&state, s.id, &data),
        error: s.error.clone(),
    };
    let change = StateChange {
        to: DeviceState::Produced,
        reason: Some(StateReason::Unassigned),
        assigned_user: None,
        device_policy: None,
        note: Some(format!("issuance session {} cancelled", s.id)),
    };
    let draft = audit(
        &caller,
        "issuance.cancel",
        format!("device:{}", data.serial),
        serde_json::json!({ "session": s.id }),
    );
    state
        .store
        .advance_issuance(
            s.id,
            s.seq,
            &update,
            Some((device.id, device.version, &change)),
            &[],
            &draft,
        )
        .await
        .map_err(|e| store_error("cancelling the issuance", e))?;
    status(State(state), Allowed(caller, a), Path(id)).await
}

/// Retry a failed attempt: the same device, the same policy and the same
/// PIN, starting from what the server knows the device's secrets are now
/// (keys are generated anew; the failed attempt's certificates were revoked).
/// Do not remove the device from the reader.
#[utoipa::path(post, path = "/issuance/{id}/retry", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = RelayBatch), (status = 409, body = ErrorBody)))]
async fn retry(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesIssue>,
    Path(id): Path<String>,
) -> ApiResult<Json<RelayBatch>> {
    let s = load(&state, &id).await?;
    if s.status != "failed" {
        return Err(ApiError::conflict(
            "session_not_failed",
            format!(
                "only a failed attempt can be retried; this session is {}",
                s.status
            ),
        ));
    }
    let mut data = unseal(&state, &s)?;
    let attempt = data.attempt.take().ok_or_else(|| {
        ApiError::conflict(
            "retry_not_possible",
            "this session keeps nothing to retry from: cancel it and start a new issuance",
        )
    })?;
    let plan = attempt.known.retry_plan(&attempt.plan);
    let (engine, batch) = PivIssuance::start(plan.clone());
    data.engine = Engine::AwaitWitness(engine);
    data.batch = batch.clone();
    data.attempt = Some(Attempt {
        plan,
        known: attempt.known,
        certificates: vec![],
    });
    let device = state
        .store
        .get_device(s.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let next_seq = s.seq + 1;
    let update = IssuanceUpdate {
        status: "running".into(),
        step: batch.commands[0].step.clone(),
        seq: next_seq,
        sealed_state: seal(&state, s.id, &data),
        error: None,
    };
    let change = StateChange {
        to: DeviceState::InProduction,
        reason: None,
        assigned_user: None,
        device_policy: None,
        note: Some(format!("issuance session {} retried", s.id)),
    };
    let draft = audit(
        &caller,
        "issuance.retry",
        format!("device:{}", data.serial),
        serde_json::json!({ "session": s.id }),
    );
    state
        .store
        .advance_issuance(
            s.id,
            s.seq,
            &update,
            Some((device.id, device.version, &change)),
            &[],
            &draft,
        )
        .await
        .map_err(|e| store_error("retrying the issuance", e))?;
    Ok(Json(relay_batch(s.id, next_seq, "running", &batch)))
}

/// Ends sessions nobody has touched for `abandon_after_seconds` (browser
/// closed, operator signed out, client gone): the server cancels them on its
/// own, as Cancel would: the device is no longer assigned to the user
/// (Produced, Unassigned) and can be recycled; certificates of the attempt
/// are revoked. Returns how many sessions it ended.
pub async fn sweep_abandoned(state: &AppState) -> anyhow::Result<usize> {
    let before = time::OffsetDateTime::now_utc()
        - time::Duration::seconds(state.config.abandon_after_seconds as i64);
    let mut ended = 0;
    for s in state.store.stale_issuances(before).await? {
        let Ok(mut data) = unseal(state, &s) else {
            continue;
        };
        let device = state.store.get_device(s.device_id).await?;
        let now = time::OffsetDateTime::now_utc();
        let revoked: Vec<Credential> = data
            .attempt
            .take()
            .map(|a| a.certificates)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(slot, der)| certificate_credential(&s, slot, der, Some(now)).ok())
            .collect();
        data.initial_pin = None;
        data.engine = Engine::Finished;
        data.batch = Batch::default();
        let update = IssuanceUpdate {
            status: "cancelled".into(),
            step: "abandoned".into(),
            seq: s.seq + 1,
            sealed_state: seal(state, s.id, &data),
            error: Some(serde_json::json!({ "code": "abandoned", "step": s.step, "message": "no activity: the server cancelled the session" }).to_string()),
        };
        let change = StateChange {
            to: DeviceState::Produced,
            reason: Some(StateReason::Unassigned),
            assigned_user: None,
            device_policy: None,
            note: Some(format!("issuance session {} abandoned", s.id)),
        };
        let draft = AuditDraft {
            actor: "system".into(),
            action: "issuance.abandoned".into(),
            target: format!("device:{}", data.serial),
            outcome: AuditOutcome::Failure,
            details: serde_json::json!({ "session": s.id, "status": s.status }),
        };
        match state
            .store
            .advance_issuance(
                s.id,
                s.seq,
                &update,
                Some((device.id, device.version, &change)),
                &revoked,
                &draft,
            )
            .await
        {
            Ok(()) => {
                ended += 1;
                if !revoked.is_empty() {
                    state.pki.invalidate_crl();
                }
                tracing::info!(session = %s.id, serial = data.serial, "abandoned issuance session cancelled");
            }
            // Someone (a client, another node) moved it on meanwhile: not abandoned.
            Err(keyward_store::StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ended)
}
