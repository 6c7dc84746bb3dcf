//! Query parameters and the views of devices, PIN rules and the User
//! Portal's devices.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query parameters of list endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Prefix of the login / serial / name to search for.
    pub prefix: Option<String>,
    /// Users: search by `login` (default) or `display_name`.
    pub by: Option<String>,
    /// Cursor from the previous page's `next`.
    pub after: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
}

/// Search the inventory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Serial number prefix (decimal).
    pub prefix: Option<String>,
    /// Canonical state name.
    pub state: Option<String>,
    /// Canonical device type.
    pub device_type: Option<String>,
    /// Cursor from the previous page.
    pub after: Option<String>,
    /// 1 to 500 (default 50).
    pub limit: Option<u32>,
}

/// Audit records in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Return records after this sequence number.
    pub after: Option<i64>,
    /// 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// Imports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `true`: write the good rows and report the bad ones. Default: any bad
    /// row rejects the whole import and nothing is written.
    pub partial: Option<bool>,
}

/// The devices at the caller's agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
pub struct AgentDevicesQuery {
    /// The `version` of the previous answer: wait until the devices change.
    pub since: Option<u64>,
    /// Seconds to wait for a change (at most 25; default 0).
    pub wait: Option<u64>,
}

/// One device with its history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceDetails {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub device: keyward_domain::Device,
    /// UI wording of the state ("In Production").
    pub state_label: String,
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<keyward_domain::DeviceHistoryEntry>,
}

/// A PIN rule as a UI shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PinRuleView {
    /// `min_length`, `max_length`, `character_set`, `max_repeated`, `max_sequential`.
    pub rule: String,
    /// The error code when the rule fails (`pin_too_short`, …).
    pub code: String,
    /// The rule in words.
    pub description: String,
    /// With `pin-check`: whether the candidate PIN passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
}

/// A candidate PIN, sent in the body (never in a URL).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinCandidate {
    pub pin: String,
}

/// The answer of a PIN check: each rule with pass or fail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PinCheckResult {
    pub valid: bool,
    pub rules: Vec<PinRuleView>,
}

/// One of my devices, as the User Portal shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MyDevice {
    pub serial: String,
    pub device_type: String,
    pub state: String,
    pub state_label: String,
    /// Get Initial PIN can reveal this device's initial PIN (once).
    pub initial_pin_available: bool,
}

/// The revealed initial PIN: shown once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct InitialPin {
    pub serial: String,
    pub pin: String,
}

impl std::fmt::Debug for InitialPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialPin")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// `pending` (the default), `done` or `closed`.
    pub state: Option<String>,
    /// One device's jobs (its serial).
    pub device: Option<String>,
}

/// A durable job (a passkey deletion at Entra ID, …).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// `delete_passkey`, …
    pub kind: String,
    /// What it is about (`device:SERIAL`).
    pub target: String,
    /// `pending`, `done` or `closed`.
    pub state: String,
    pub attempts: u32,
    /// RFC 3339: not tried again before.
    pub next_at: String,
    /// Why the last try failed.
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A certificate issued with an address relying parties cannot use in its
/// CRL distribution point or Authority Information Access.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BadUrl {
    /// The device's serial.
    pub device: String,
    /// The PIV slot (`9a`).
    pub slot: Option<String>,
    /// The certificate's serial (hex).
    pub certificate: String,
    pub revoked: bool,
    pub url: String,
    /// What is wrong with it (`unspecified address`, `loopback`, `port 0`, …).
    pub problem: String,
}

/// Declare incident: why the device is gone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentRequest {
    /// `lost`, `stolen`, `damaged`, `forgotten` or `expired`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The `version` you read: refused with 409 if the device changed since.
    pub expected_version: i64,
}

/// Restore or terminate: a person's action on one device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceActionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The `version` you read: refused with 409 if the device changed since.
    pub expected_version: i64,
}

crate::redacted_debug!(PinCandidate {  } hides { pin });
