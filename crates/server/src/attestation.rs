//! Device attestation before certifying (YubiKey PIV ATTEST): batch 2
//! returns, with each generated key, the device's attestation certificate
//! for it and the device attestation certificate (5FFF01). Each key's
//! attestation is verified (`keyward_pki::attestation`) against the
//! configured roots (`attestation_roots`: Yubico's PIV root, or the virtual
//! manufacturer CA of `keyward vcard`) and compared with the plan (slot,
//! serial, firmware, PIN and touch policies). Passkeys likewise: the
//! makeCredential's packed attestation against `fido_attestation_roots`
//! and the device type's AAGUIDs, before Graph sees it. The
//! outcome of each key (attested or unattested, and why) goes to the audit
//! trail (`issuance.attestation`); when the policy requires attestation
//! (its `require_device_attestation`, on unless it says `false` for device
//! types that attest) the session's machine fails the attempt on an
//! unattested key before anything is certified. Devices that cannot attest (C4000, generic PIV) are not
//! asked.

use keyward_domain::{AuditDraft, AuditOutcome};
use keyward_engine::piv::GeneratedKey;
use keyward_pki::attestation::{
    certificate_from_object, verify_piv_attestations, AttestedKey, PinPolicy, PivAttestation,
    TouchPolicy,
};
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
    /// FIDO2 packed attestation roots (passkeys).
    pub fido_roots: Vec<Vec<u8>>,
}

impl Anchors {
    pub fn read(config: &crate::config::Config) -> anyhow::Result<Anchors> {
        Ok(Anchors {
            roots: read_certificates("attestation_roots", &config.attestation_roots)?,
            intermediates: read_certificates(
                "attestation_intermediates",
                &config.attestation_intermediates,
            )?,
            fido_roots: read_certificates(
                "fido_attestation_roots",
                &config.fido_attestation_roots,
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
                for c in &chain {
                    // Fail closed, as for an unreadable file: a certificate
                    // that cannot be encoded again is not dropped in silence.
                    out.push(der::Encode::to_der(c).map_err(|e| {
                        anyhow::anyhow!(
                            "{key}: {}: a certificate cannot be encoded: {e}",
                            path.display()
                        )
                    })?);
                }
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

/// What the plan asked of a key: the attestation must say the same.
struct Expected {
    serial: u64,
    firmware: Option<(u8, u8, u8)>,
    slot: u8,
}

/// The attestation's facts compared with the plan: the slot, the serial,
/// the firmware, and the PIN and touch policies Keyward generated the key
/// with (the YubiKey defaults of the slot: GENERATE sends PIN_DEFAULT and
/// TOUCH_DEFAULT).
fn matches_plan(v: &PivAttestation, want: &Expected) -> Result<(), String> {
    let show = |o: Option<String>| o.unwrap_or_else(|| "none".into());
    if v.slot != Some(want.slot) {
        return Err(format!(
            "the attestation is for slot {}, the key was generated in {:02x}",
            show(v.slot.map(|s| format!("{s:02x}"))),
            want.slot
        ));
    }
    if v.serial.map(u64::from) != Some(want.serial) {
        return Err(format!(
            "the attestation names serial {}, not {}",
            show(v.serial.map(|n| n.to_string())),
            want.serial
        ));
    }
    if let Some(fw) = want.firmware {
        if v.firmware != Some(fw) {
            return Err(format!(
                "the attestation names firmware {}, the device reported {}.{}.{}",
                show(v.firmware.map(|(a, b, c)| format!("{a}.{b}.{c}"))),
                fw.0,
                fw.1,
                fw.2
            ));
        }
    }
    let (pin, touch) = keyward_engine::piv::generated_key_policies(want.slot);
    let (pin, touch) = (PinPolicy::from(pin), TouchPolicy::from(touch));
    if v.pin_policy != Some(pin) {
        return Err(format!(
            "the attested key's PIN policy is {:?}, the plan's is {pin:?}",
            v.pin_policy
        ));
    }
    if v.touch_policy != Some(touch) {
        return Err(format!(
            "the attested key's touch policy is {:?}, the plan's is {touch:?}",
            v.touch_policy
        ));
    }
    Ok(())
}

/// Verifies each key's attestation (the `VerifyAttestation` effect):
/// answers one outcome per key, whether attestation is required, and the
/// audit record of the outcomes (written with the session's move).
#[allow(clippy::too_many_arguments)]
pub(super) async fn verify(
    state: &AppState,
    caller: &Caller,
    session: Uuid,
    serial: u64,
    firmware: Option<(u8, u8, u8)>,
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
                .and_then(|v| {
                    matches_plan(
                        &v,
                        &Expected {
                            serial,
                            firmware,
                            slot: k.slot,
                        },
                    )
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

/// Verifies a passkey's attestation (the `VerifyPasskeyAttestation`
/// effect): packed, chaining to the FIDO roots, for an AAGUID the device's
/// type and firmware have (`keyward_domain::authenticators`). Answers the
/// outcome and its audit record.
pub(super) fn verify_passkey(
    state: &AppState,
    caller: &Caller,
    session: Uuid,
    device: &keyward_domain::Device,
    registration: &keyward_engine::fido::Registration,
    required: bool,
) -> (Result<(), String>, AuditDraft) {
    let verified = keyward_pki::fido_attestation::verify_packed(
        &registration.attestation_object,
        &registration.client_data_json,
        &[],
        &state.attestation_anchors.fido_roots,
        time::OffsetDateTime::now_utc(),
    );
    let aaguid = Uuid::from_bytes(registration.aaguid);
    let outcome = verified.map_err(|e| e.to_string()).and_then(|v| {
        keyward_domain::authenticators::allowed(
            device.device_type,
            device.firmware_version,
            &Uuid::from_bytes(v.aaguid),
        )
        .map(|_| ())
    });
    let mut draft = audit(
        caller,
        "issuance.passkey_attestation",
        format!("device:{}", device.serial.0),
        serde_json::json!({
            "session": session, "aaguid": aaguid, "attested": outcome.is_ok(),
            "reason": outcome.as_ref().err(), "required": required,
        }),
    );
    if outcome.is_err() {
        draft.outcome = AuditOutcome::Failure;
    }
    (outcome, draft)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a YubiKey 5.7.1, serial 31000042, says of a key it generated in
    /// 9C with the defaults (PIN always, touch never).
    fn attested_9c() -> PivAttestation {
        PivAttestation {
            firmware: Some((5, 7, 1)),
            serial: Some(31_000_042),
            pin_policy: Some(PinPolicy::Always),
            touch_policy: Some(TouchPolicy::Never),
            form_factor: None,
            slot: Some(0x9C),
            device_subject: String::new(),
            anchor_subject: String::new(),
        }
    }

    fn plan(slot: u8) -> Expected {
        Expected {
            serial: 31_000_042,
            firmware: Some((5, 7, 1)),
            slot,
        }
    }

    #[test]
    fn an_attestation_matching_the_plan_passes() {
        assert_eq!(matches_plan(&attested_9c(), &plan(0x9C)), Ok(()));
    }

    #[test]
    fn each_fact_that_differs_from_the_plan_is_refused_by_name() {
        // Another slot's attestation (a relay swapping them).
        let e = matches_plan(&attested_9c(), &plan(0x9A)).unwrap_err();
        assert!(e.contains("slot 9c"), "{e}");
        let cases: [(fn(&mut PivAttestation), &str); 5] = [
            (|a| a.serial = Some(31_000_043), "serial 31000043"),
            (|a| a.serial = None, "serial none"),
            (|a| a.firmware = Some((5, 4, 3)), "firmware 5.4.3"),
            (|a| a.pin_policy = Some(PinPolicy::Never), "PIN policy"),
            (
                |a| a.touch_policy = Some(TouchPolicy::Always),
                "touch policy",
            ),
        ];
        for (change, says) in cases {
            let mut a = attested_9c();
            change(&mut a);
            let e = matches_plan(&a, &plan(0x9C)).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
        // A plan without a recorded firmware does not compare it.
        let mut a = attested_9c();
        a.firmware = Some((5, 4, 3));
        let mut p = plan(0x9C);
        p.firmware = None;
        assert_eq!(matches_plan(&a, &p), Ok(()));
    }
}
