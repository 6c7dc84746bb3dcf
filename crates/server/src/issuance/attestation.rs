//! Device attestation before certifying (YubiKey PIV ATTEST): batch 2
//! returns, with each generated key, the device's attestation certificate
//! for it and the device attestation certificate (5FFF01). Each key's
//! attestation is verified (`keyward_pki::attestation`) against the
//! configured roots (`attestation_roots`: Yubico's PIV root, or the virtual
//! manufacturer CA of `keyward vcard`), with the device's serial. The
//! outcome of each key (attested or unattested, and why) goes to the audit
//! trail (`issuance.attestation`); under "Require device attestation" an
//! unattested key fails the attempt before anything is certified. Devices
//! that cannot attest (C4000, generic PIV) are not subject to it.

use base64::Engine as _;
use keyward_domain::{AuditDraft, AuditOutcome, Device, DeviceType};
use keyward_engine::{Failure, Response};
use keyward_pki::attestation::{certificate_from_object, verify_piv_attestations, AttestedKey};
use keyward_store::IssuanceSession;

use super::Engine;
use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiResult;

/// The configured roots, DER (PEM files may hold several certificates).
/// Read once per server (at the first attestation), not per issuance.
fn anchors(state: &AppState) -> &[Vec<u8>] {
    state
        .attestation_anchors
        .get_or_init(|| read_anchors(state))
}

fn read_anchors(state: &AppState) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for path in &state.config.attestation_roots {
        let Ok(bytes) = std::fs::read(path) else {
            tracing::warn!(path = %path.display(), "attestation root unreadable");
            continue;
        };
        match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {
                for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
                    let body: String = block
                        .split("-----END CERTIFICATE-----")
                        .next()
                        .unwrap_or("")
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
                        out.push(der);
                    }
                }
            }
            _ => out.push(bytes),
        }
    }
    out
}

/// Verifies the attestations in batch 2's responses (before the keys are
/// certified); answers the failure that ends the attempt when attestation is
/// required and a key is unattested, and the audit record of each key's
/// outcome, which the caller writes with the session's next move (one write).
pub(super) async fn before_certify(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
    device: &Device,
    engine: &Engine,
    responses: &[Response],
) -> ApiResult<(Option<Failure>, Option<AuditDraft>)> {
    let Engine::AwaitKeys(e) = engine else {
        return Ok((None, None));
    };
    if device.device_type != DeviceType::YubiKey5 {
        return Ok((None, None));
    }
    // A batch that failed is reported by the engine step itself.
    let Ok(certs) = e.clone().on_responses(responses) else {
        return Ok((None, None));
    };
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    let anchors = anchors(state);
    let now = time::OffsetDateTime::now_utc();
    let device_cert = certs
        .device_attestation_certificate()
        .map(certificate_from_object);
    // The keys that came with an attestation, verified together: the device
    // certificate's chain is checked once per issuance, not once per key.
    let mut verified = match &device_cert {
        Some(Ok(dev)) => {
            let keys: Vec<AttestedKey<'_>> = certs
                .keys()
                .iter()
                .filter_map(|k| {
                    k.attestation.as_ref().map(|a| AttestedKey {
                        attestation_der: a,
                        expected_spki_der: &k.spki_der,
                    })
                })
                .collect();
            verify_piv_attestations(dev, &[], anchors, &keys, now)
        }
        _ => Vec::new(),
    }
    .into_iter();
    let mut records = Vec::new();
    let mut failure = None;
    for k in certs.keys() {
        let result: Result<(), String> = match (&k.attestation, &device_cert) {
            (None, _) => Err("the device gave no attestation for the key".into()),
            (_, None) => Err("the device has no attestation certificate (5FFF01)".into()),
            (_, Some(Err(e))) => Err(e.to_string()),
            // One result per attested key, in the keys' order.
            (Some(_), Some(Ok(_))) => verified
                .next()
                .unwrap_or_else(|| Err(keyward_pki::attestation::AttestationError::KeyMismatch))
                .map_err(|e| e.to_string())
                .and_then(|v| match v.serial {
                    Some(n) if u64::from(n) == device.serial.0 => Ok(()),
                    other => Err(format!(
                        "the attestation names serial {}, not {}",
                        other
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "none".into()),
                        device.serial
                    )),
                }),
        };
        records.push(serde_json::json!({
            "slot": format!("{:02x}", k.slot),
            "attested": result.is_ok(),
            "reason": result.as_ref().err(),
        }));
        if let Err(why) = result {
            if settings.require_device_attestation && failure.is_none() {
                failure = Some(Failure::new(
                    "attestation_failed",
                    &format!("attest key {:02X}", k.slot),
                    format!("the device did not prove it generated the key: {why}"),
                ));
            }
        }
    }
    let mut draft = audit(
        caller,
        "issuance.attestation",
        format!("device:{}", device.serial),
        serde_json::json!({ "session": s.id, "slots": records, "required": settings.require_device_attestation }),
    );
    if records.iter().any(|r| r["attested"] == false) {
        draft.outcome = AuditOutcome::Failure;
    }
    Ok((failure, Some(draft)))
}
