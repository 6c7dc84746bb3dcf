//! The sealed session state, the management-key master key, and the one
//! writer of a session's moves: its next batch, or its end.

use axum::Json;
use keyward_domain::{AuditDraft, AuditOutcome, SessionAction, SessionStatus, StateChange};
use keyward_engine::session::SEALED_FORMAT;
use keyward_engine::{Batch, DeviceSession, Failure, PasskeyRecord};
use keyward_proto::RelayBatch;
use keyward_store::{Credential, IssuanceSession, IssuanceUpdate};
use uuid::Uuid;

use super::relay_batch;
use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

pub(super) fn seal_context(id: Uuid) -> String {
    format!("issuance:{id}")
}

pub(super) fn seal(state: &AppState, id: Uuid, data: &DeviceSession) -> Vec<u8> {
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(data).expect("session data serialises"));
    state.sealer.seal(&seal_context(id), &plain)
}

pub(super) fn unseal(state: &AppState, s: &IssuanceSession) -> ApiResult<DeviceSession> {
    let plain = zeroize::Zeroizing::new(
        state
            .sealer
            .open(&seal_context(s.id), &s.sealed_state)
            .map_err(|e| ApiError::internal("opening the session state", e))?,
    );
    let data: DeviceSession = serde_json::from_slice(&plain)
        .map_err(|e| ApiError::internal("reading the session state", e))?;
    if data.format > SEALED_FORMAT {
        return Err(ApiError::conflict(
            "session_from_newer_release",
            format!(
                "session {} was sealed by a newer release of Keyward (format {}, this one reads up to {SEALED_FORMAT}): finish or cancel it there",
                s.id, data.format
            ),
        ));
    }
    Ok(data)
}

/// A certificate put on (or, for `revoked_at`, taken back from) the device;
/// `attested`: whether the device proved it generated the key.
pub(super) fn certificate_credential(
    s: &IssuanceSession,
    slot: u8,
    der: Vec<u8>,
    revoked_at: Option<time::OffsetDateTime>,
    attested: Option<bool>,
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
        serial: hex::encode(tbs.serial_number.as_bytes()),
        not_after: Some(time::OffsetDateTime::from(
            tbs.validity.not_after.to_system_time(),
        )),
        der: Some(der),
        created_at: time::OffsetDateTime::now_utc(),
        revoked_at,
        revocation_reason: None,
        attested,
    })
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
        revocation_reason: None,
        attested: record.attested,
    }
}

/// A self-service caller's refusal for a device that is not an issued
/// device of theirs (one that does not exist included: nothing to probe).
pub(super) fn not_yours() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "device_not_yours",
        "the device is not an issued device of yours",
    )
    .field("serial")
}

/// The audit actions' prefix of a session's kind.
pub(super) fn audit_prefix(action: SessionAction) -> &'static str {
    match action {
        SessionAction::Recycle => "recycle",
        SessionAction::ChangePin => "pin_change",
        SessionAction::Unlock => "unlock",
        SessionAction::Update => "update",
        _ => "issuance",
    }
}

/// The error information a person can copy.
pub(super) fn report(
    s: &IssuanceSession,
    f: &Failure,
    at: time::OffsetDateTime,
) -> serde_json::Value {
    serde_json::json!({
        "code": f.code, "step": f.step, "sw": f.sw.map(|sw| format!("{sw:04X}")), "message": f.message,
        "session": s.id, "at": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    })
}

/// Writes the session's next batch (its sealed state, step and sequence
/// number) with its audit records, in one write.
pub(super) async fn write_batch(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
    data: &DeviceSession,
    mut audits: Vec<AuditDraft>,
) -> ApiResult<Json<RelayBatch>> {
    let next_seq = s.seq + 1;
    let update = IssuanceUpdate {
        status: SessionStatus::Running,
        step: data.batch().step(),
        seq: next_seq,
        sealed_state: seal(state, s.id, data),
        error: None,
        passkeys_erased: false,
        passkey_reregistration: None,
        update: None,
        pin_checked: false,
    };
    audits.push(audit(
        caller,
        &format!("{}.step", audit_prefix(s.action)),
        format!("device:{}", data.serial),
        serde_json::json!({ "session": s.id, "batch": next_seq }),
    ));
    let audits: Vec<&AuditDraft> = audits.iter().collect();
    state
        .store
        .advance_issuance(s.id, s.seq, &update, None, &[], &audits)
        .await
        .map_err(|e| store_error("saving the session", e))?;
    Ok(Json(relay_batch(
        s.id,
        next_seq,
        SessionStatus::Running,
        data.batch(),
    )))
}

/// How a session closes: what the store records in one write.
pub(super) struct Close {
    pub(super) status: SessionStatus,
    pub(super) step: String,
    pub(super) error: Option<String>,
    /// The device record (as read) and its move, if it moves.
    pub(super) device: Option<(keyward_domain::Device, StateChange)>,
    pub(super) credentials: Vec<Credential>,
    pub(super) audits: Vec<AuditDraft>,
    /// A FIDO reset erased the device's passkeys on record.
    pub(super) passkeys_erased: bool,
    /// The device's "passkey to register again" flag, when decided.
    pub(super) passkey_reregistration: Option<bool>,
    /// An update session's end: its request and what it changes.
    pub(super) update: Option<keyward_store::UpdateOutcome>,
    /// A PIN checked against the policy's rules was set.
    pub(super) pin_checked: bool,
}

/// Writes the end of a session (`data`, its secrets already dropped), the
/// device's move and the credentials, in one transaction.
pub(super) async fn close(
    state: &AppState,
    s: &IssuanceSession,
    data: &DeviceSession,
    close: Close,
) -> ApiResult<Json<RelayBatch>> {
    let update = IssuanceUpdate {
        status: close.status,
        step: close.step,
        seq: s.seq + 1,
        sealed_state: seal(state, s.id, data),
        error: close.error,
        passkeys_erased: close.passkeys_erased,
        passkey_reregistration: close.passkey_reregistration,
        update: close.update,
        pin_checked: close.pin_checked,
    };
    let audits: Vec<&AuditDraft> = close.audits.iter().collect();
    state
        .store
        .advance_issuance(
            s.id,
            s.seq,
            &update,
            close.device.as_ref().map(|(d, c)| (d, c)),
            &close.credentials,
            &audits,
        )
        .await
        .map_err(|e| store_error("ending the session", e))?;
    Ok(Json(relay_batch(
        s.id,
        s.seq + 1,
        close.status,
        &Batch::default(),
    )))
}

/// A failure's audit record.
pub(super) fn failure_audit(
    caller: &Caller,
    action: &str,
    serial: u64,
    details: serde_json::Value,
) -> AuditDraft {
    let mut draft = audit(caller, action, format!("device:{serial}"), details);
    draft.outcome = AuditOutcome::Failure;
    draft
}

/// Opens a follow-up session (Recycle, Change PIN) of the device whose
/// latest session is `last`: the session row and its audit record
/// (`<action>.start` with `details` and the session's id) in one write,
/// then the agent that relays it. Answers its first batch.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_follow_up(
    state: &AppState,
    caller: &Caller,
    last: &IssuanceSession,
    user_id: Uuid,
    data: &DeviceSession,
    agent: Option<Uuid>,
    mut details: serde_json::Map<String, serde_json::Value>,
    action: SessionAction,
) -> ApiResult<(axum::http::StatusCode, Json<RelayBatch>)> {
    let id = Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let session = IssuanceSession {
        id,
        device_id: last.device_id,
        user_id,
        policy_id: last.policy_id,
        action,
        status: SessionStatus::Running,
        step: data.batch().step(),
        seq: 1,
        sealed_state: seal(state, id, data),
        error: None,
        created_by: caller.actor(),
        created_at: now,
        updated_at: now,
    };
    details.insert("session".into(), serde_json::json!(id));
    let draft = audit(
        caller,
        &format!("{}.start", audit_prefix(action)),
        format!("device:{}", data.serial),
        serde_json::Value::Object(details),
    );
    state
        .store
        .open_device_session(&session, &draft)
        .await
        .map_err(|e| store_error("starting the session", e))?;
    if let Some(agent) = agent {
        crate::agents::bind_session(state, id, agent).await?;
    }
    Ok((
        axum::http::StatusCode::CREATED,
        Json(relay_batch(id, 1, SessionStatus::Running, data.batch())),
    ))
}
