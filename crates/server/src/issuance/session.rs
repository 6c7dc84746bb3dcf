//! The sealed session state, the management-key master key, and how a
//! session ends.

use axum::Json;
use keyward_domain::{AuditDraft, AuditOutcome, StateChange};
use keyward_engine::piv::Secret;
use keyward_engine::Batch;
use keyward_proto::RelayBatch;
use keyward_store::{Credential, IssuanceSession, IssuanceUpdate};
use rand::RngCore;
use uuid::Uuid;

use super::{relay_batch, Attempt, Engine, Kept, SessionData, MASTER_KEY_SECRET, SEALED_FORMAT};
use crate::api::store_error;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

pub(super) fn seal_context(id: Uuid) -> String {
    format!("issuance:{id}")
}

pub(super) fn seal(state: &AppState, id: Uuid, data: &SessionData) -> Vec<u8> {
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(data).expect("session data serialises"));
    state.sealer.seal(&seal_context(id), &plain)
}

pub(super) fn unseal(state: &AppState, s: &IssuanceSession) -> ApiResult<SessionData> {
    let plain = zeroize::Zeroizing::new(
        state
            .sealer
            .open(&seal_context(s.id), &s.sealed_state)
            .map_err(|e| ApiError::internal("opening the session state", e))?,
    );
    let data: SessionData = serde_json::from_slice(&plain)
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

/// The master key for per-device management keys, created on first use.
pub(super) async fn master_key(state: &AppState) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
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

/// A certificate put on (or, for `revoked_at`, taken back from) the device.
pub(super) fn certificate_credential(
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
        serial: hex::encode(tbs.serial_number.as_bytes()),
        not_after: Some(time::OffsetDateTime::from(
            tbs.validity.not_after.to_system_time(),
        )),
        der: Some(der),
        created_at: time::OffsetDateTime::now_utc(),
        revoked_at,
    })
}

/// How a session ends: its status, the device's change and what to record.
pub(super) struct Ending {
    pub(super) status: keyward_domain::SessionStatus,
    pub(super) step: String,
    pub(super) error: Option<String>,
    pub(super) device: StateChange,
    pub(super) credentials: Vec<Credential>,
    pub(super) audit: AuditDraft,
}

/// Writes the end of a session (its secrets dropped from the sealed state),
/// the device's change and the credentials, in one transaction.
pub(super) async fn end_session(
    state: &AppState,
    s: &IssuanceSession,
    device: &keyward_domain::Device,
    (user_login, policy_name, serial): (String, String, u64),
    ending: Ending,
    keep: Option<(Attempt, Option<Secret>, bool)>,
    kept: Option<Kept>,
) -> ApiResult<Json<RelayBatch>> {
    // A failed attempt keeps what a retry needs; an ended session keeps only
    // the PUK and management key a recycle needs (sealed), never the PIN.
    let (attempt, initial_pin, change_pin_at_end) = match keep {
        Some((a, pin, change)) => (Some(a), pin, change),
        None => (None, None, false),
    };
    let data = SessionData {
        format: SEALED_FORMAT,
        engine: Engine::Finished,
        batch: Batch::default(),
        user_login,
        policy_name,
        serial,
        initial_pin,
        attempt,
        change_pin_at_end,
        kept,
    };
    let update = IssuanceUpdate {
        status: ending.status,
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
            Some((device, &ending.device)),
            &ending.credentials,
            &[&ending.audit],
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
