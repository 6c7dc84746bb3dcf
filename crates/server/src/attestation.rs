//! Device attestation before certifying (YubiKey PIV ATTEST): batch 2
//! returns, with each generated key, the device's attestation certificate
//! for it and the device attestation certificate (5FFF01). Each key's
//! attestation is verified (`keyward_pki::attestation`) against the
//! configured roots (`attestation_roots`: Yubico's PIV root, or the virtual
//! manufacturer CA of `keyward vcard`), with the device's serial. The
//! outcome of each key (attested or unattested, and why) goes to the audit
//! trail (`issuance.attestation`); when the policy requires attestation
//! (its `require_device_attestation`, on unless it says `false` for device
//! types that attest) the session's machine fails the attempt on an
//! unattested key before anything is certified. Devices that cannot attest (C4000, generic PIV) are not
//! asked.

use keyward_domain::{AuditDraft, AuditOutcome};
use keyward_engine::piv::GeneratedKey;
use keyward_pki::attestation::{certificate_from_object, verify_piv_attestations, AttestedKey};
use uuid::Uuid;

use crate::api::audit;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiResult;

/// The configured roots and intermediates, DER, read at start (a file
/// that is configured but unreadable, or holds no certificate, stops the
/// server: a missing root must not quietly make every key unattested).
#[derive(Debug, Default)]
pub struct Anchors {
    pub roots: Vec<Vec<u8>>,
    /// Certificates between a device's attestation certificate and a root
    /// that the device does not carry (Yubico's "PIV Attestation B 1").
    pub intermediates: Vec<Vec<u8>>,
}

impl Anchors {
    pub fn read(config: &crate::config::Config) -> anyhow::Result<Anchors> {
        Ok(Anchors {
            roots: read_certificates("attestation_roots", &config.attestation_roots)?,
            intermediates: read_certificates(
                "attestation_intermediates",
                &config.attestation_intermediates,
            )?,
        })
    }
}

/// Every certificate of `paths` (PEM, one or more, or one DER), DER.
fn read_certificates(key: &str, paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    use der::Decode;
    let mut out = Vec::new();
    for path in paths {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("{key}: {}: {e}", path.display()))?;
        match x509_cert::Certificate::load_pem_chain(&bytes) {
            Ok(chain) if !chain.is_empty() => {
                out.extend(chain.iter().filter_map(|c| der::Encode::to_der(c).ok()))
            }
            _ => {
                x509_cert::Certificate::from_der(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{key}: {} holds no certificate (PEM or DER): {e}",
                        path.display()
                    )
                })?;
                out.push(bytes)
            }
        }
    }
    Ok(out)
}

/// Verifies each key's attestation (the `VerifyAttestation` effect):
/// answers one outcome per key, whether attestation is required, and the
/// audit record of the outcomes (written with the session's move).
pub(super) async fn verify(
    state: &AppState,
    caller: &Caller,
    session: Uuid,
    serial: u64,
    device_certificate: Option<&[u8]>,
    keys: &[GeneratedKey],
    required: bool,
) -> ApiResult<(Vec<Result<(), String>>, bool, AuditDraft)> {
    let anchors = &state.attestation_anchors;
    let now = time::OffsetDateTime::now_utc();
    let device_cert = device_certificate.map(certificate_from_object);
    // The keys that came with an attestation, verified together: the device
    // certificate's chain is checked once per issuance, not once per key.
    let mut verified = match &device_cert {
        Some(Ok(dev)) => {
            let attested: Vec<AttestedKey<'_>> = keys
                .iter()
                .filter_map(|k| {
                    k.attestation.as_ref().map(|a| AttestedKey {
                        attestation_der: a,
                        expected_spki_der: &k.spki_der,
                    })
                })
                .collect();
            verify_piv_attestations(dev, &anchors.intermediates, &anchors.roots, &attested, now)
        }
        _ => Vec::new(),
    }
    .into_iter();
    let mut outcomes = Vec::new();
    let mut records = Vec::new();
    for k in keys {
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
                    Some(n) if u64::from(n) == serial => Ok(()),
                    other => Err(format!(
                        "the attestation names serial {}, not {serial}",
                        other
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "none".into()),
                    )),
                }),
        };
        records.push(serde_json::json!({
            "slot": format!("{:02x}", k.slot),
            "attested": result.is_ok(),
            "reason": result.as_ref().err(),
        }));
        outcomes.push(result);
    }
    let mut draft = audit(
        caller,
        "issuance.attestation",
        format!("device:{serial}"),
        serde_json::json!({ "session": session, "slots": records, "required": required }),
    );
    if outcomes.iter().any(Result::is_err) {
        draft.outcome = AuditOutcome::Failure;
    }
    Ok((outcomes, required, draft))
}
