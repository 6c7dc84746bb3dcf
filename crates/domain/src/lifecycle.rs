//! What a device's move does to its credentials, and which moves a person
//! may make (the others belong to device sessions).
//!
//! The mapping follows RFC 5280 and how the anchors revoke
//! (`lifecycle-notes.md`): a lost or stolen device's keys are compromised; a
//! damaged or terminated device's keys are no longer used; a forgotten
//! device's certificates are put on hold, released when it turns up again
//! ("Original found"); an expired device's certificates are superseded.

use crate::names::{DeviceState, StateReason};
use crate::state::Transition;

crate::canonical_enum! {
    /// The RFC 5280 CRLReason Keyward writes (`code` is the number in CRLs
    /// and OCSP answers).
    pub enum RevocationReason (field = "revocation_reason") {
        Unspecified = "unspecified", "Unspecified";
        KeyCompromise = "key_compromise", "Key compromise";
        Superseded = "superseded", "Superseded";
        CessationOfOperation = "cessation_of_operation", "Cessation of operation";
        CertificateHold = "certificate_hold", "Certificate hold";
    }
}

impl RevocationReason {
    /// The CRLReason number.
    pub const fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::CertificateHold => 6,
        }
    }

    /// The reason of a CRLReason number Keyward writes.
    pub fn from_code(code: u8) -> Option<RevocationReason> {
        RevocationReason::ALL
            .iter()
            .copied()
            .find(|r| r.code() == code)
    }
}

/// What a move does to the device's certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateAction {
    /// Revoke for good with this reason: live ones, and held ones get their
    /// final reason. `only_unexpired`: certificates already expired are left.
    Revoke {
        reason: RevocationReason,
        only_unexpired: bool,
    },
    /// Put the live ones on hold (`certificateHold`).
    Hold,
    /// Release the held ones: they are valid again (absent from the next
    /// full CRL, `good` in OCSP).
    Release,
}

/// What follows a device's move, written in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CredentialEffects {
    pub certificates: Option<CertificateAction>,
    /// Delete the device's passkeys at their Passkey-Enabled Service (a job).
    pub delete_passkeys: bool,
}

/// The effects of moving a device from `from` to (`to`, `reason`).
pub fn effects(
    from: DeviceState,
    to: DeviceState,
    reason: Option<StateReason>,
) -> CredentialEffects {
    use CertificateAction as C;
    use RevocationReason as R;
    let revoke = |reason, only_unexpired| CredentialEffects {
        certificates: Some(C::Revoke {
            reason,
            only_unexpired,
        }),
        delete_passkeys: true,
    };
    match (from, to, reason) {
        (DeviceState::Issued, DeviceState::Invalid, Some(r)) => match r {
            StateReason::Lost | StateReason::Stolen => revoke(R::KeyCompromise, false),
            StateReason::Forgotten => CredentialEffects {
                certificates: Some(C::Hold),
                delete_passkeys: false,
            },
            StateReason::Expired => revoke(R::Superseded, true),
            _ => revoke(R::CessationOfOperation, false),
        },
        // "Original found": the hold is released.
        (DeviceState::Invalid, DeviceState::Issued, _) => CredentialEffects {
            certificates: Some(C::Release),
            delete_passkeys: false,
        },
        (_, DeviceState::Terminated, _) => revoke(R::CessationOfOperation, false),
        // Recycled: the keys are gone from the device.
        (_, DeviceState::Available, Some(StateReason::Recycled)) => {
            revoke(R::CessationOfOperation, false)
        }
        _ => CredentialEffects::default(),
    }
}

/// The effects of Suspend (`true`: certificates on hold, passkeys deleted)
/// and Resume (`false`: the hold released; the passkey is registered again
/// by an update, not here).
pub fn suspension_effects(suspend: bool) -> CredentialEffects {
    if suspend {
        CredentialEffects {
            certificates: Some(CertificateAction::Hold),
            delete_passkeys: true,
        }
    } else {
        CredentialEffects {
            certificates: Some(CertificateAction::Release),
            delete_passkeys: false,
        }
    }
}

/// The moves a person makes on the device state route; the others (issue,
/// complete, produce, retry, cancel, deliver, recycle) are made by device
/// sessions, so that no device is marked Issued without one and no session
/// loses its device.
pub fn by_person(t: &Transition) -> bool {
    matches!(
        t.operation,
        "unassign" | "terminate" | "declare_incident" | "restore"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TRANSITIONS;

    #[test]
    fn every_incident_maps_to_its_rfc5280_reason() {
        let incident = |r| effects(DeviceState::Issued, DeviceState::Invalid, Some(r));
        let revoked = |e: CredentialEffects| match e.certificates {
            Some(CertificateAction::Revoke { reason, .. }) => Some(reason.code()),
            _ => None,
        };
        assert_eq!(revoked(incident(StateReason::Lost)), Some(1));
        assert_eq!(revoked(incident(StateReason::Stolen)), Some(1));
        assert_eq!(revoked(incident(StateReason::Damaged)), Some(5));
        assert_eq!(revoked(incident(StateReason::Expired)), Some(4));
        assert_eq!(
            incident(StateReason::Forgotten),
            CredentialEffects {
                certificates: Some(CertificateAction::Hold),
                delete_passkeys: false
            }
        );
        for r in [StateReason::Lost, StateReason::Stolen, StateReason::Damaged] {
            assert!(incident(r).delete_passkeys, "{r}");
        }
        let term = effects(DeviceState::Invalid, DeviceState::Terminated, None);
        assert_eq!(revoked(term), Some(5));
        assert!(term.delete_passkeys);
        assert_eq!(
            effects(DeviceState::Invalid, DeviceState::Issued, None).certificates,
            Some(CertificateAction::Release)
        );
        assert_eq!(
            effects(DeviceState::Available, DeviceState::Assigned, None),
            CredentialEffects::default()
        );
        let recycled = effects(
            DeviceState::Produced,
            DeviceState::Available,
            Some(StateReason::Recycled),
        );
        assert_eq!(revoked(recycled), Some(5));
        assert!(recycled.delete_passkeys);
        // A session's own moves touch no credential.
        assert_eq!(
            effects(DeviceState::InProduction, DeviceState::Issued, None),
            CredentialEffects::default()
        );
        for r in RevocationReason::ALL {
            assert_eq!(RevocationReason::from_code(r.code()), Some(*r));
        }
    }

    #[test]
    fn people_make_only_the_moves_that_no_session_makes() {
        let person: Vec<&str> = TRANSITIONS
            .iter()
            .filter(|t| by_person(t))
            .map(|t| t.operation)
            .collect();
        for op in ["issue", "complete", "produce", "retry", "cancel", "recycle"] {
            assert!(!person.contains(&op), "{op}");
        }
        for op in ["terminate", "declare_incident", "restore", "unassign"] {
            assert!(person.contains(&op), "{op}");
        }
    }
}
