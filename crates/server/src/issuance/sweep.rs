//! Abandoned sessions: the server cancels what nobody touches any more.

use keyward_domain::{AuditDraft, AuditOutcome, SessionStatus};
use keyward_store::Credential;

use super::retry_cancel::unassign;
use super::session::{certificate_credential, close, passkey_credential, unseal, Close};
use crate::app::AppState;

/// Ends sessions nobody has touched for `abandon_after_seconds` (browser
/// closed, operator signed out, client gone): the server cancels them on its
/// own, as Cancel would: the device is no longer assigned to the user
/// (Produced, Unassigned) and can be recycled; certificates of the attempt
/// are revoked, and a passkey it registered is deleted at its service (a
/// job written with the end).
/// Returns how many sessions it ended.
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
        // An unlock abandoned after its FIDO reset: the passkeys on record
        // are gone from the device.
        let erased = data.erased_passkeys();
        let (certificates, passkey) = data.cancel();
        let mut revoked: Vec<Credential> = certificates
            .into_iter()
            .filter_map(|(slot, der)| certificate_credential(&s, slot, der, Some(now), None).ok())
            .collect();
        revoked.extend(passkey.iter().map(|p| passkey_credential(&s, p, Some(now))));
        let draft = AuditDraft {
            actor: "system".into(),
            action: "issuance.abandoned".into(),
            target: format!("device:{}", data.serial),
            outcome: AuditOutcome::Failure,
            details: serde_json::json!({ "session": s.id, "status": s.status }),
        };
        let closed = close(
            state,
            &s,
            &data,
            Close {
                status: SessionStatus::Cancelled,
                step: "abandoned".into(),
                error: Some(serde_json::json!({ "code": "abandoned", "step": s.step, "message": "no activity: the server cancelled the session" }).to_string()),
                device: unassign(&s, format!("issuance session {} abandoned", s.id))
                    .map(|c| (device, c)),
                credentials: revoked,
                audits: vec![draft],
                passkeys_erased: erased,
                passkey_reregistration: erased.then_some(true),
                update: None,
                pin_checked: false,
            },
        )
        .await;
        match closed {
            Ok(_) => {
                // The passkey's deletion is a job written with the end.
                ended += 1;
                tracing::info!(session = %s.id, serial = data.serial, "abandoned issuance session cancelled");
            }
            // Someone (a client, another node) moved it on meanwhile: not abandoned.
            Err(e) if e.status == axum::http::StatusCode::CONFLICT => {}
            Err(e) => return Err(anyhow::anyhow!("{}", e.detail.message)),
        }
    }
    Ok(ended)
}
