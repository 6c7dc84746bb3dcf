//! Abandoned sessions: the server cancels what nobody touches any more.

use keyward_domain::{AuditDraft, AuditOutcome, DeviceState, StateChange, StateReason};
use keyward_engine::Batch;
use keyward_store::{Credential, IssuanceUpdate};

use super::session::{certificate_credential, seal, unseal};
use super::{Engine, Kept};
use crate::app::AppState;

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
        let attempt = data.attempt.take();
        if let Some(a) = &attempt {
            data.kept = Some(Kept::from_known(&a.known));
        }
        let mut revoked: Vec<Credential> = attempt
            .map(|a| a.certificates)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(slot, der)| certificate_credential(&s, slot, der, Some(now)).ok())
            .collect();
        // A passkey registered before the device PIN change: revoked on
        // record, deleted at its service once the session has ended.
        let passkey = super::fido_step::registered_passkey(&data.engine);
        if let Some(record) = &passkey {
            revoked.push(super::fido_step::passkey_credential(&s, record, Some(now)));
        }
        data.initial_pin = None;
        data.engine = Engine::Finished;
        data.batch = Batch::default();
        let update = IssuanceUpdate {
            status: keyward_domain::SessionStatus::Cancelled,
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
                // A recycle or PIN change never moved the device: nothing to undo.
                (s.action != keyward_domain::SessionAction::Recycle
                    && s.action != keyward_domain::SessionAction::ChangePin)
                    .then_some((&device, &change)),
                &revoked,
                &[&draft],
            )
            .await
        {
            Ok(()) => {
                ended += 1;
                if let Some(record) = &passkey {
                    super::fido_step::compensate(state, std::slice::from_ref(record)).await;
                }
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
