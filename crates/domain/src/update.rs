//! Request update (issue 17): what re-applying a device policy to an issued
//! device changes, the "Applied changes" HID CMS lists before the operator
//! confirms. Decided from what is on record, without I/O; the update
//! session carries the list out.
//!
//! | on record, against the target policy | change |
//! |---|---|
//! | a PKI application's slot holds no certificate | add it (a key generated on the device) |
//! | a certificate within its application's renewal window | renew it (`rekey` or `same_key`) |
//! | the application changed (algorithm, CA, template) | renew it (a new algorithm always rekeys) |
//! | a certificate in a slot the policy has no application for | remove it (revoked `cessationOfOperation`) |
//! | a FIDO application, and no passkey (or one flagged to register again) | add the passkey |
//! | no FIDO application, a passkey on record | remove the passkey (deleted at its service) |
//! | PIN rules other than those the PIN was set under, or an offline unlock since | change the PIN |

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ValidationError, ValidationResult};
use crate::names::{PivSlot, RenewalMode};
use crate::pin::PinApplication;
use crate::policy::{DevicePolicy, PkiApplication};

/// A certificate on record for the device (not revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateOnRecord {
    pub credential: Uuid,
    pub slot: PivSlot,
    pub not_after: Option<OffsetDateTime>,
}

/// What is on record for an issued device.
#[derive(Debug, Clone)]
pub struct OnRecord<'a> {
    /// The policy the device was issued (or last updated) under.
    pub current_policy: Option<&'a DevicePolicy>,
    pub certificates: Vec<CertificateOnRecord>,
    /// A passkey on record that is not deleted.
    pub has_passkey: bool,
    /// Flagged by Suspend, or by a FIDO reset that could not register again.
    pub passkey_reregistration: bool,
    /// An offline unlock set a PIN the policy's rules did not check.
    pub pin_check_due: bool,
    /// The device can move a key to a retired slot
    /// ([`crate::DeviceType::moves_keys`]): a new Key Management key keeps
    /// the old one there.
    pub moves_keys: bool,
}

/// Why a certificate is renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RenewReason {
    /// Inside its renewal window.
    Expiring {
        #[serde(with = "time::serde::rfc3339")]
        not_after: OffsetDateTime,
    },
    /// The policy's application for the slot is not the one it was issued
    /// under.
    PolicyChanged,
}

/// Why the PIN must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinChangeReason {
    /// The policy's PIN rules are not those the PIN was set under.
    RulesChanged,
    /// An offline unlock set the PIN: the device checked only its own limits.
    AfterOfflineUnlock,
}

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum AppliedChange {
    AddCertificate {
        slot: PivSlot,
        name: String,
    },
    RenewCertificate {
        slot: PivSlot,
        name: String,
        mode: RenewalMode,
        #[serde(flatten)]
        why: RenewReason,
        /// The certificate renewed (revoked `superseded` after a rekey).
        replaces: Uuid,
    },
    RemoveCertificate {
        slot: PivSlot,
        /// The certificate removed (revoked `cessationOfOperation`).
        replaces: Uuid,
    },
    AddPasskey {
        service: String,
    },
    RemovePasskey,
    ChangePin {
        why: PinChangeReason,
    },
}

impl AppliedChange {
    /// The line the Request Update dialog shows.
    pub fn describe(&self) -> String {
        match self {
            AppliedChange::AddCertificate { slot, name } => {
                format!("Add certificate {name} ({}): a new key on the device", slot.as_str().to_uppercase())
            }
            AppliedChange::RenewCertificate {
                slot,
                name,
                mode,
                why,
                ..
            } => {
                let how = match mode {
                    RenewalMode::Rekey if *slot == PivSlot::KeyManagement => "with a new key; the old key and certificate move to a retired slot (they still decrypt earlier mail), the old certificate is revoked (superseded)",
                RenewalMode::Rekey => "with a new key; the old certificate is revoked (superseded)",
                    RenewalMode::SameKey => "for the same key; the old certificate is left to expire",
                };
                let because = match why {
                    RenewReason::Expiring { not_after } => format!(
                        "it expires on {}",
                        not_after.date()
                    ),
                    RenewReason::PolicyChanged => "the policy's application changed".to_string(),
                };
                format!(
                    "Renew certificate {name} ({}) {how}: {because}",
                    slot.as_str().to_uppercase()
                )
            }
            AppliedChange::RemoveCertificate { slot, .. } => format!(
                "Remove the certificate in slot {} (revoked: the policy has no application for it)",
                slot.as_str().to_uppercase()
            ),
            AppliedChange::AddPasskey { service } => {
                format!("Register the passkey with {service}")
            }
            AppliedChange::RemovePasskey => {
                "Remove the passkey (deleted at its service: the policy has no FIDO application)"
                    .to_string()
            }
            AppliedChange::ChangePin { why } => match why {
                PinChangeReason::RulesChanged => {
                    "Change the PIN: the policy's PIN rules changed".to_string()
                }
                PinChangeReason::AfterOfflineUnlock => {
                    "Change the PIN: it was set in an offline unlock, unchecked against the policy's rules".to_string()
                }
            },
        }
    }

    /// Whether the change needs the device (a passkey removal does not).
    pub fn touches_device(&self) -> bool {
        !matches!(self, AppliedChange::RemovePasskey)
    }
}

/// The PIN rules a PIN is checked against (not the retry counts).
fn same_pin_rules(a: &PinApplication, b: &PinApplication) -> bool {
    (
        a.min_length,
        a.max_length,
        a.character_set,
        a.max_repeated,
        a.max_sequential,
    ) == (
        b.min_length,
        b.max_length,
        b.character_set,
        b.max_repeated,
        b.max_sequential,
    )
}

/// What issuing the certificate again would change.
fn application_changed(was: &PkiApplication, now: &PkiApplication) -> bool {
    (was.algorithm, &was.certificate_authority, &was.template)
        != (now.algorithm, &now.certificate_authority, &now.template)
}

/// The changes that bring the device on record to `target` at `now`.
/// Refused: a new Key Management key (a rekey, or its algorithm changed) on
/// a device that cannot move the old key to a retired slot (the new 9D key
/// would destroy the one that decrypts earlier mail).
pub fn applied_changes(
    target: &DevicePolicy,
    on_record: &OnRecord<'_>,
    now: OffsetDateTime,
) -> ValidationResult<Vec<AppliedChange>> {
    let mut out = Vec::new();
    let current = on_record.current_policy;
    for app in &target.pki_applications {
        let held = on_record.certificates.iter().find(|c| c.slot == app.slot);
        let Some(held) = held else {
            out.push(AppliedChange::AddCertificate {
                slot: app.slot,
                name: app.name.clone(),
            });
            continue;
        };
        let was = current.and_then(|p| p.pki_applications.iter().find(|a| a.slot == app.slot));
        let changed = was.is_some_and(|was| application_changed(was, app));
        let algorithm_changed = was.is_some_and(|was| was.algorithm != app.algorithm);
        let window = time::Duration::days(i64::from(app.renewal_window()));
        let expiring = held.not_after.filter(|end| *end - now <= window);
        let why = match (expiring, changed) {
            (Some(not_after), _) => RenewReason::Expiring { not_after },
            (None, true) => RenewReason::PolicyChanged,
            (None, false) => continue,
        };
        let mode = if algorithm_changed {
            RenewalMode::Rekey
        } else {
            app.renewal_mode()
        };
        if app.slot == PivSlot::KeyManagement && mode == RenewalMode::Rekey && !on_record.moves_keys
        {
            let (code, what) = if algorithm_changed {
                (
                    "key_management_algorithm_changed",
                    "changes the Key Management (9D) algorithm",
                )
            } else {
                (
                    "renewal_rekey_key_management",
                    "renews Key Management (9D) with a new key (renewal = \"rekey\")",
                )
            };
            return Err(ValidationError::new(
                code,
                "policy",
                format!(
                    "{} {what}: the old 9D key decrypts earlier mail and must move to a retired slot (82 to 95), which needs a device that moves keys (a YubiKey from firmware 5.7); this device cannot: renew 9D with the same key, or recycle and re-issue the device",
                    target.name
                ),
            ));
        }
        out.push(AppliedChange::RenewCertificate {
            slot: app.slot,
            name: app.name.clone(),
            mode,
            why,
            replaces: held.credential,
        });
    }
    for held in &on_record.certificates {
        if !target.pki_applications.iter().any(|a| a.slot == held.slot) {
            out.push(AppliedChange::RemoveCertificate {
                slot: held.slot,
                replaces: held.credential,
            });
        }
    }
    match &target.fido_application {
        Some(f) if !on_record.has_passkey || on_record.passkey_reregistration => {
            out.push(AppliedChange::AddPasskey {
                service: if f.passkey_service_name.is_empty() {
                    "the Passkey-Enabled Service".into()
                } else {
                    f.passkey_service_name.clone()
                },
            })
        }
        None if on_record.has_passkey => out.push(AppliedChange::RemovePasskey),
        _ => {}
    }
    if on_record.pin_check_due {
        out.push(AppliedChange::ChangePin {
            why: PinChangeReason::AfterOfflineUnlock,
        });
    } else if current.is_some_and(|p| !same_pin_rules(&p.pin_application, &target.pin_application))
    {
        out.push(AppliedChange::ChangePin {
            why: PinChangeReason::RulesChanged,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-06 12:00 UTC);

    fn policy(extra: serde_json::Value) -> DevicePolicy {
        let mut p = serde_json::json!({
            "name": "Staff", "device_types": ["yubikey5"], "management_key": "random",
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric" },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name}", "validity_days": 365 } },
                { "name": "Key Management", "slot": "9d", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name}", "validity_days": 365 } }
            ],
        });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        serde_json::from_value(p).unwrap()
    }

    fn cert(slot: PivSlot, days_left: i64) -> CertificateOnRecord {
        CertificateOnRecord {
            credential: Uuid::from_u128(slot as u128 + 1),
            slot,
            not_after: Some(NOW + time::Duration::days(days_left)),
        }
    }

    fn record(current: &DevicePolicy, certificates: Vec<CertificateOnRecord>) -> OnRecord<'_> {
        OnRecord {
            current_policy: Some(current),
            certificates,
            has_passkey: false,
            passkey_reregistration: false,
            pin_check_due: false,
            moves_keys: false,
        }
    }

    #[test]
    fn nothing_to_do_for_the_same_policy_far_from_expiry() {
        let p = policy(serde_json::json!({}));
        let r = record(
            &p,
            vec![
                cert(PivSlot::Authentication, 300),
                cert(PivSlot::KeyManagement, 300),
            ],
        );
        assert_eq!(applied_changes(&p, &r, NOW).unwrap(), vec![]);
    }

    #[test]
    fn certificates_inside_their_window_are_renewed_9a_with_a_new_key_9d_with_the_same() {
        let p = policy(serde_json::json!({}));
        let r = record(
            &p,
            vec![
                cert(PivSlot::Authentication, 41),
                cert(PivSlot::KeyManagement, 10),
            ],
        );
        let changes = applied_changes(&p, &r, NOW).unwrap();
        let modes: Vec<_> = changes
            .iter()
            .map(|c| match c {
                AppliedChange::RenewCertificate { slot, mode, .. } => (*slot, *mode),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            modes,
            [
                (PivSlot::Authentication, RenewalMode::Rekey),
                (PivSlot::KeyManagement, RenewalMode::SameKey)
            ]
        );
        assert!(changes[0].describe().contains("with a new key"));
        assert!(changes[1].describe().contains("left to expire"));
        // 43 days left: outside the default 42-day window.
        let r = record(
            &p,
            vec![
                cert(PivSlot::Authentication, 43),
                cert(PivSlot::KeyManagement, 43),
            ],
        );
        assert_eq!(applied_changes(&p, &r, NOW).unwrap(), vec![]);
    }

    #[test]
    fn another_policy_adds_removes_renews_and_asks_a_pin_change() {
        let was = policy(serde_json::json!({}));
        let mut target = policy(serde_json::json!({
            "name": "Staff 2",
            "pin_application": { "min_length": 8, "max_length": 8, "character_set": "numeric" },
            "fido_application": { "passkey_service_id": Uuid::from_u128(7), "passkey_service_name": "Contoso", "share_device_pin": false, "cred_protect": 1 }
        }));
        target.pki_applications[0].algorithm = crate::names::KeyAlgorithm::EccP384;
        target.pki_applications.remove(1);
        target.pki_applications.push(serde_json::from_value(serde_json::json!(
            { "name": "Digital Signature", "slot": "9c", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
              "template": { "subject_dn": "CN={display_name}", "validity_days": 365 } })).unwrap());
        let r = record(
            &was,
            vec![
                cert(PivSlot::Authentication, 300),
                cert(PivSlot::KeyManagement, 300),
            ],
        );
        let changes = applied_changes(&target, &r, NOW).unwrap();
        let kinds: Vec<String> = changes
            .iter()
            .map(|c| {
                serde_json::to_value(c).unwrap()["change"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "renew_certificate",
                "add_certificate",
                "remove_certificate",
                "add_passkey",
                "change_pin"
            ]
        );
        assert!(matches!(
            &changes[0],
            AppliedChange::RenewCertificate {
                why: RenewReason::PolicyChanged,
                mode: RenewalMode::Rekey,
                ..
            }
        ));
    }

    #[test]
    fn a_flagged_or_removed_passkey_and_an_offline_unlock() {
        let mut p = policy(serde_json::json!({
            "fido_application": { "passkey_service_id": Uuid::from_u128(7), "share_device_pin": false, "cred_protect": 1 }
        }));
        let mut r = record(
            &p,
            vec![
                cert(PivSlot::Authentication, 300),
                cert(PivSlot::KeyManagement, 300),
            ],
        );
        r.has_passkey = true;
        assert_eq!(applied_changes(&p, &r, NOW).unwrap(), vec![]);
        r.passkey_reregistration = true;
        r.pin_check_due = true;
        assert_eq!(
            applied_changes(&p, &r, NOW).unwrap(),
            vec![
                AppliedChange::AddPasskey {
                    service: "the Passkey-Enabled Service".into()
                },
                AppliedChange::ChangePin {
                    why: PinChangeReason::AfterOfflineUnlock
                }
            ]
        );
        let old = p.clone();
        p.fido_application = None;
        let mut r = record(
            &old,
            vec![
                cert(PivSlot::Authentication, 300),
                cert(PivSlot::KeyManagement, 300),
            ],
        );
        r.has_passkey = true;
        assert_eq!(
            applied_changes(&p, &r, NOW).unwrap(),
            vec![AppliedChange::RemovePasskey]
        );
    }

    #[test]
    fn a_new_key_management_algorithm_is_refused() {
        let was = policy(serde_json::json!({}));
        let mut target = was.clone();
        target.pki_applications[1].algorithm = crate::names::KeyAlgorithm::EccP384;
        let r = record(
            &was,
            vec![
                cert(PivSlot::Authentication, 300),
                cert(PivSlot::KeyManagement, 300),
            ],
        );
        assert_eq!(
            applied_changes(&target, &r, NOW).unwrap_err().code,
            "key_management_algorithm_changed"
        );
        // A device that moves keys keeps the old one in a retired slot.
        let r = OnRecord {
            moves_keys: true,
            ..r
        };
        let changes = applied_changes(&target, &r, NOW).unwrap();
        assert!(matches!(
            changes.as_slice(),
            [AppliedChange::RenewCertificate {
                slot: PivSlot::KeyManagement,
                mode: RenewalMode::Rekey,
                why: RenewReason::PolicyChanged,
                ..
            }]
        ));
        assert!(changes[0].describe().contains("retired slot"));
    }

    #[test]
    fn a_key_management_rekey_needs_a_device_that_moves_keys() {
        let mut p = policy(serde_json::json!({}));
        p.pki_applications[1].renewal = Some(RenewalMode::Rekey);
        let r = record(
            &p,
            vec![
                cert(PivSlot::Authentication, 300),
                cert(PivSlot::KeyManagement, 10),
            ],
        );
        let e = applied_changes(&p, &r, NOW).unwrap_err();
        assert_eq!(e.code, "renewal_rekey_key_management");
        assert!(
            e.message.contains("YubiKey from firmware 5.7"),
            "{}",
            e.message
        );
        let r = OnRecord {
            moves_keys: true,
            ..r
        };
        assert!(matches!(
            applied_changes(&p, &r, NOW).unwrap().as_slice(),
            [AppliedChange::RenewCertificate {
                slot: PivSlot::KeyManagement,
                mode: RenewalMode::Rekey,
                ..
            }]
        ));
    }
}
