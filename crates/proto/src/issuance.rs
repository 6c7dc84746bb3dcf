//! Device sessions as the API shows them: starting an issuance or a
//! recycle, and a session's status (the relay protocol's batches are in the
//! crate root).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::RelayPrompt;

/// Add Device for a user: the request.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartIssuance {
    /// The user's login.
    pub user: String,
    /// The device policy's name (with `replaces`, empty: the replaced
    /// device's policy).
    #[serde(default)]
    pub policy: String,
    /// The device's serial number (decimal).
    pub serial: String,
    /// The PIN (display modes Displayed and Disguised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The PIN again (Disguised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_pin: Option<String>,
    /// "Action Type": `issue` (the default: issue now) or `assign` (bind the
    /// device to the user with the policy; issuance completes later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Who relays the device commands: `local` (the default: the caller's
    /// client), `agent` (the online workstation agent that reports the
    /// device) or an agent's id. Prompts are answered by the caller's client
    /// either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Replace Device: the serial of the user's device this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// Why it is replaced: `lost`, `stolen`, `damaged`, `expired`
    /// (permanent: the original is terminated when this device is issued)
    /// or `forgotten` (temporary: this device lasts the policy's
    /// `temporary_validity_days`, or until the original is found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_reason: Option<String>,
    /// The approved request this issuance carries out (issue 18): needed
    /// when the policy requires approval; used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub request: Option<uuid::Uuid>,
    /// A device the inventory does not hold, as the relaying client
    /// identified it (`keyward issue`): its type and firmware, for the
    /// automatic import of unknown devices (the device's first batch checks
    /// them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified_firmware: Option<String>,
}

/// Add Device with action `assign`: the device is bound to the user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assigned {
    pub serial: String,
    /// `assigned`.
    pub state: String,
    pub user: String,
    pub policy: String,
}

/// Recycle: the request (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecycleRequest {
    /// Who relays the device commands: `local` (the default: the caller's
    /// client), `agent` (the online workstation agent that reports the
    /// device) or an agent's id. Prompts are answered by the caller's client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// An unlock request the help desk created: the person completes the
/// unlock in the User Portal before `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnlockRequestView {
    pub id: uuid::Uuid,
    pub serial: String,
    /// Who created it (`operator:LOGIN`, `token:NAME`).
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub expires_at: time::OffsetDateTime,
}

/// One applied change of an update, as the Request Update dialog lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateChangeView {
    /// `add_certificate`, `renew_certificate`, `remove_certificate`,
    /// `add_passkey`, `remove_passkey`, `change_pin`.
    pub change: String,
    /// The PIV slot (`9a`) of a certificate change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// `rekey` or `same_key` for a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The sentence shown to the operator.
    pub description: String,
}

/// Request Update: the policy to re-apply (default: the device's own).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequestCreate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// What re-applying a policy would change (before confirming), or a
/// pending update request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateRequestView {
    /// None for a preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<uuid::Uuid>,
    pub serial: String,
    /// The policy the device is brought to.
    pub policy: String,
    /// `operator`, `renewal` (the daily scan) or `offline_unlock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub created_at: Option<time::OffsetDateTime>,
    pub changes: Vec<UpdateChangeView>,
}

/// The renewal scan: `at` is the time it scans for (default now).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewalScanRequest {
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub at: Option<time::OffsetDateTime>,
}

/// What the renewal scan did: the devices given an update request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewalScanResult {
    pub scanned: usize,
    pub requested: Vec<String>,
    /// Devices with a certificate to renew whose policy cannot be applied
    /// to them (no request written): the serial, the code and why.
    #[serde(default)]
    pub refused: Vec<RenewalRefused>,
}

/// A device the renewal scan could not request an update for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewalRefused {
    pub serial: String,
    pub code: String,
    pub message: String,
}

/// Offline unlock: the challenge the device showed the person (a C4000);
/// none for a YubiKey (its PUK is disclosed instead).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineUnlockRequest {
    /// Hexadecimal, as the tool printed it (spaces allowed).
    #[serde(default)]
    pub challenge: Option<String>,
}

/// What the help desk reads to the person: the response to the challenge
/// (C4000) or the device's PUK (YubiKey), and the policy's PIN rules.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OfflineUnlockAnswer {
    /// `response` or `puk`.
    pub kind: String,
    /// The response (hexadecimal) or the PUK.
    pub value: String,
    /// The device policy's PIN rules, to tell the person (the tool checks
    /// only the device's own limits offline).
    pub pin_rules: Vec<String>,
}

crate::redacted_debug!(OfflineUnlockAnswer { kind, pin_rules } hides { value });

/// A session as the API shows it (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = SessionStatus)]
pub struct SessionView {
    pub session_id: String,
    pub serial: String,
    pub user: String,
    pub policy: String,
    /// `running`, `issued`, `failed`, `cancelled`; a recycle ends `recycled`,
    /// a PIN change `pin_changed` or `pin_change_failed`.
    #[schema(value_type = String)]
    pub status: keyward_domain::SessionStatus,
    pub step: String,
    pub seq: i64,
    /// `issue`, `assign`, `recycle` or `change_pin`.
    #[schema(value_type = String)]
    pub action: keyward_domain::SessionAction,
    pub error: Option<SessionError>,
    pub credentials: Vec<CredentialView>,
    /// The prompts the person must answer now (the batch out carries no
    /// device command); the person's client posts the answers to the relay.
    pub prompts: Vec<RelayPrompt>,
    /// The workstation agent (id) that relays this session's device
    /// commands, if it runs through one (`keyward issue --retry` follows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What an ended session wants the person to know besides its status
    /// (an unlock: the FIDO PIN needs the device reinserted, stays blocked,
    /// or was reset and the passkey registered again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<SessionNotice>,
}

/// A session's notice: a stable code and a sentence for the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionNotice {
    /// `fido_pin_needs_reinsert`, `fido_pin_still_blocked`, `fido_reset`,
    /// `passkey_registered_again`, `passkey_not_registered`.
    pub code: String,
    pub message: String,
}

/// Why a session stopped: the information a person can copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionError {
    /// `device_removed`, `wrong_pin`, `declined_by_person`, `abandoned`, …
    pub code: String,
    pub step: String,
    pub message: String,
    /// The device's status word (hex), when a command failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw: Option<String>,
    /// A failed PIN change: the tries the device has left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u8>,
    /// The session and the time (RFC 3339), for a support request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A credential a session put on a device (a certificate, a passkey).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    pub id: uuid::Uuid,
    pub device_id: uuid::Uuid,
    pub session_id: uuid::Uuid,
    /// `certificate` or `passkey`.
    pub kind: String,
    /// The PIV slot (`9a`) of a certificate; `aaguid:…` of a passkey.
    pub slot: Option<String>,
    /// The certificate's serial number (hex); the passkey's Graph id.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub not_after: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub revoked_at: Option<time::OffsetDateTime>,
    /// Whether the device proved it generated the key (its attestation
    /// verified); null: recorded before Keyward checked.
    #[serde(default)]
    pub attested: Option<bool>,
}

crate::redacted_debug!(StartIssuance { user, policy, serial, action, via, replaces, replace_reason, request, identified_type, identified_firmware } hides { pin, confirm_pin });
