//! Why an attempt stopped, and where: the failure codes and the steps of a
//! device session, as enums whose names are the wire's strings.

use serde::{Deserialize, Serialize};

keyward_domain::canonical_enum! {
    /// A failure's stable code (the `code` of a session's error, the CLI's
    /// JSON): what a person or a script decides on.
    pub enum FailureCode (field = "code") {
        // The device's answers.
        UnexpectedStatus = "unexpected_status", "The device refused a command";
        IncompleteBatch = "incomplete_batch", "The device stopped answering";
        BadResponse = "bad_response", "The device answered something unreadable";
        DeviceMismatch = "device_mismatch", "Another device than the one expected";
        DeviceNotAuthentic = "device_not_authentic", "The device failed mutual authentication";
        DeviceNotBlocked = "device_not_blocked", "The device's PIN and PUK did not block";
        NotSupported = "not_supported", "The device lacks what the policy needs";
        ReadBackMismatch = "read_back_mismatch", "The device reads back other data";
        CertificateMismatch = "certificate_mismatch", "The device holds another certificate than the one on record";
        CertificateMissing = "certificate_missing", "A key was not certified";
        KeyMissing = "key_missing", "The key on record is not on the device";
        RetiredSlotsUnusable = "retired_slots_unusable", "No retired slot can keep the old key";
        BadPlan = "bad_plan", "The plan cannot be carried out";
        BadSlot = "bad_slot", "An unknown PIV slot";
        PinTooLong = "pin_too_long", "A PIN or PUK is too long";
        Internal = "internal", "An internal error";
        // The transport's causes (a batch cut short).
        DeviceRemoved = "device_removed", "The device was removed";
        CardReset = "card_reset", "Another program reset the card";
        ReaderGone = "reader_gone", "The reader went away";
        Timeout = "timeout", "The device did not answer in time";
        SharingViolation = "sharing_violation", "Another program holds the device";
        // The person's answers.
        DeclinedByPerson = "declined_by_person", "The person declined";
        AnswerRequired = "answer_required", "A prompt was not answered";
        AnswerMissing = "answer_missing", "A prompt was not answered";
        InitialPinMismatch = "initial_pin_mismatch", "The initial PIN was not typed back";
        PinInvalid = "pin_invalid", "A PIN of the wrong length";
        PinRules = "pin_rules", "The PIN breaks the rules";
        WrongPin = "wrong_pin", "The current PIN is wrong";
        PinBlocked = "pin_blocked", "The PIN is blocked";
        WrongPuk = "wrong_puk", "The PUK is wrong";
        PukBlocked = "puk_blocked", "The PUK is blocked";
        PukUncertain = "puk_uncertain", "The server is not sure of the PUK";
        // Certifying.
        AttestationFailed = "attestation_failed", "The device did not prove it generated the key";
        CertificateTemplate = "certificate_template", "The certificate template cannot be filled";
        // The FIDO application.
        FidoDeviceUnfit = "fido_device_unfit", "The device's FIDO application cannot hold a passkey";
        PasskeyServiceUnfit = "passkey_service_unfit", "The Passkey-Enabled Service asks what the device cannot";
        TouchCancelled = "touch_cancelled", "The wait for a touch was cancelled";
        TouchTimeout = "touch_timeout", "Nobody touched the device in time";
        FidoPinWrong = "fido_pin_wrong", "The FIDO PIN is wrong";
        FidoPinBlocked = "fido_pin_blocked", "The FIDO PIN is blocked";
        FidoPinAuthBlocked = "fido_pin_auth_blocked", "Too many wrong FIDO PINs";
        FidoPinNotSet = "fido_pin_not_set", "The FIDO application has no PIN";
        FidoPinPolicy = "fido_pin_policy", "The device refused the FIDO PIN";
        PasskeyExists = "passkey_exists", "The device already holds this passkey";
        FidoStorageFull = "fido_storage_full", "The device has no room for a passkey";
        CtapError = "ctap_error", "The authenticator refused";
        FidoResetFailed = "fido_reset_failed", "The FIDO application was not reset";
        // Entra ID (Microsoft Graph).
        EntraUserUnknown = "entra_user_unknown", "The user is unknown to Entra ID";
        GraphTokenRefused = "graph_token_refused", "Entra ID refused the token request";
        GraphUserNotFound = "graph_user_not_found", "Graph does not know the user";
        GraphMethodNotFound = "graph_method_not_found", "Graph does not know the passkey";
        GraphPermissionMissing = "graph_permission_missing", "The application lacks a Graph permission";
        GraphSelfServiceNotAllowed = "graph_self_service_not_allowed", "Graph refuses self-service registration";
        GraphRegistrationRefused = "graph_registration_refused", "Graph refused the registration";
        GraphUnauthorized = "graph_unauthorized", "Graph refused the token";
        GraphThrottled = "graph_throttled", "Graph is throttling";
        GraphError = "graph_error", "Graph answered an error";
        GraphUnreachable = "graph_unreachable", "Graph cannot be reached";
        GraphBadAnswer = "graph_bad_answer", "Graph answered something unreadable";
        GraphConfig = "graph_config", "The Passkey-Enabled Service is misconfigured";
    }
}

impl FailureCode {
    /// The transport's cause of a batch cut short, by the name clients
    /// report (`transport_error`), if it is one.
    pub fn transport_cause(name: &str) -> Option<FailureCode> {
        match name.parse().ok()? {
            c @ (FailureCode::DeviceRemoved
            | FailureCode::CardReset
            | FailureCode::ReaderGone
            | FailureCode::Timeout
            | FailureCode::SharingViolation) => Some(c),
            _ => None,
        }
    }
}

/// A step of a device session: where a command belongs and where a
/// failure happened. Its text is the wire's (`generate key 9A`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    IdentifyDevice,
    SelectPiv,
    AuthenticateManagementKey,
    VerifyPin,
    SetFidoPinSharing,
    SetRetryCounts,
    GenerateKey(u8),
    AttestKey(u8),
    CertifyKeys,
    ReadAttestationCertificate,
    WriteCertificate(u8),
    ReadCertificate(u8),
    /// The certificates of the writes batch, before it is built.
    WriteCertificates,
    WriteChuid,
    WriteCcc,
    ChangePin,
    ChangePuk,
    ReplaceManagementKey,
    ReadBack,
    SetNewPin,
    FidoProbe,
    FidoPin,
    FidoRegister,
    EnterCurrentAndNewPin,
    BlockPin,
    BlockPuk,
    ResetPiv,
    CheckFactoryPin,
    ReplaceKey(u8),
    DeleteCertificate(u8),
    DeleteChuid,
    DeleteCcc,
    ResetPin,
    ResetPuk,
    ResetRetryCounts,
    ResetPinSharing,
    RestoreManagementKey,
    ResetFido,
    ReadPukTries,
    ReadFidoPinTries,
    UnblockPin,
    ReadKeyHistory,
    WriteKeyHistory,
    /// GET METADATA of a slot's key (its public key, or none).
    ReadKey(u8),
    /// MOVE KEY of a slot's key to a retired slot.
    RetireKey(u8),
    /// The relay itself (more responses than commands).
    Relay,
}

/// The steps without a slot, with their text.
const NAMED: [(Step, &str); 37] = [
    (Step::IdentifyDevice, "identify device"),
    (Step::SelectPiv, "select PIV"),
    (
        Step::AuthenticateManagementKey,
        "authenticate management key",
    ),
    (Step::VerifyPin, "verify PIN"),
    (Step::SetFidoPinSharing, "set FIDO PIN sharing"),
    (Step::SetRetryCounts, "set retry counts"),
    (Step::CertifyKeys, "certify keys"),
    (
        Step::ReadAttestationCertificate,
        "read attestation certificate",
    ),
    (Step::WriteCertificates, "write certificates"),
    (Step::WriteChuid, "write CHUID"),
    (Step::WriteCcc, "write CCC"),
    (Step::ChangePin, "change PIN"),
    (Step::ChangePuk, "change PUK"),
    (Step::ReplaceManagementKey, "replace management key"),
    (Step::ReadBack, "read back"),
    (Step::SetNewPin, "set new PIN"),
    (Step::FidoProbe, "FIDO: read the authenticator"),
    (Step::FidoPin, "FIDO: PIN"),
    (Step::FidoRegister, "FIDO: register the passkey"),
    (
        Step::EnterCurrentAndNewPin,
        "enter the current and the new PIN",
    ),
    (Step::BlockPin, "block PIN"),
    (Step::BlockPuk, "block PUK"),
    (Step::ResetPiv, "reset PIV"),
    (Step::CheckFactoryPin, "check factory PIN"),
    (Step::DeleteChuid, "delete CHUID"),
    (Step::DeleteCcc, "delete CCC"),
    (Step::ResetPin, "reset PIN"),
    (Step::ResetPuk, "reset PUK"),
    (Step::ResetRetryCounts, "reset retry counts"),
    (Step::ResetPinSharing, "reset PIN sharing"),
    (Step::RestoreManagementKey, "restore management key"),
    (Step::ResetFido, "reset FIDO"),
    (Step::ReadPukTries, "read PUK tries"),
    (Step::ReadFidoPinTries, "read FIDO PIN tries"),
    (Step::UnblockPin, "unblock PIN"),
    (Step::ReadKeyHistory, "read key history"),
    (Step::WriteKeyHistory, "write key history"),
];

/// The steps of one slot, by the text before the slot.
const OF_SLOT: [(&str, fn(u8) -> Step); 8] = [
    ("generate key ", Step::GenerateKey),
    ("attest key ", Step::AttestKey),
    ("write certificate ", Step::WriteCertificate),
    ("read certificate ", Step::ReadCertificate),
    ("replace key ", Step::ReplaceKey),
    ("delete certificate ", Step::DeleteCertificate),
    ("read key ", Step::ReadKey),
    ("retire key ", Step::RetireKey),
];

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = |prefix: &str, slot: u8| format!("{prefix}{slot:02X}");
        let text = match *self {
            Step::GenerateKey(s) => slot("generate key ", s),
            Step::AttestKey(s) => slot("attest key ", s),
            Step::WriteCertificate(s) => slot("write certificate ", s),
            Step::ReadCertificate(s) => slot("read certificate ", s),
            Step::ReplaceKey(s) => slot("replace key ", s),
            Step::DeleteCertificate(s) => slot("delete certificate ", s),
            Step::ReadKey(s) => slot("read key ", s),
            Step::RetireKey(s) => slot("retire key ", s),
            Step::Relay => "relay".into(),
            named => NAMED
                .iter()
                .find(|(s, _)| *s == named)
                .map(|(_, t)| t.to_string())
                .unwrap_or_default(),
        };
        f.write_str(&text)
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Step, String> {
        if s == "relay" {
            return Ok(Step::Relay);
        }
        if let Some((step, _)) = NAMED.iter().find(|(_, t)| *t == s) {
            return Ok(*step);
        }
        OF_SLOT
            .iter()
            .find_map(|(prefix, make)| {
                let slot = s.strip_prefix(prefix)?;
                (slot.len() == 2)
                    .then(|| u8::from_str_radix(slot, 16).ok())
                    .flatten()
                    .map(make)
            })
            .ok_or_else(|| format!("unknown step {s:?}"))
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an attempt stopped: enough for a person to copy and for the server
/// to decide on retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{step}: {message} ({code})")]
pub struct Failure {
    pub code: FailureCode,
    pub step: Step,
    /// The device's status word, when a command failed.
    pub sw: Option<u16>,
    pub message: String,
}

impl Failure {
    pub fn new(code: FailureCode, step: Step, message: impl Into<String>) -> Failure {
        Failure {
            code,
            step,
            sw: None,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_reads_back_from_its_text() {
        let mut all: Vec<Step> = NAMED.iter().map(|(s, _)| *s).collect();
        all.extend(OF_SLOT.iter().map(|(_, make)| make(0x9A)));
        all.push(Step::Relay);
        for step in all {
            let text = step.to_string();
            assert!(!text.is_empty(), "{step:?}");
            assert_eq!(text.parse::<Step>(), Ok(step), "{text}");
        }
        assert_eq!(Step::GenerateKey(0x9C).to_string(), "generate key 9C");
        assert!("generate key 9".parse::<Step>().is_err());
        assert!("make tea".parse::<Step>().is_err());
    }

    #[test]
    fn failure_codes_are_the_wire_names() {
        let f = Failure::new(FailureCode::DeviceRemoved, Step::WriteChuid, "gone");
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["code"], "device_removed");
        assert_eq!(v["step"], "write CHUID");
        assert_eq!(serde_json::from_value::<Failure>(v).unwrap(), f);
        assert_eq!(
            FailureCode::transport_cause("card_reset"),
            Some(FailureCode::CardReset)
        );
        assert_eq!(FailureCode::transport_cause("wrong_pin"), None);
    }
}
