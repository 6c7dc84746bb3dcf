//! The agent protocol's wire types (`/api/v1/agents/…`): pairing by device
//! code, the devices an agent reports, and the long-poll for work. The
//! server and the agent (`keyward agent`) share them; docs/protocol.md
//! describes the protocol.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::RelayBatch;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// What the agent calls itself (its host name), shown to the approver.
    pub name: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PairingStarted {
    pub agent_id: String,
    /// Shown to the person, who approves it: `XXXX-XXXX`.
    pub code: String,
    /// Kept by the agent to poll with (never shown).
    pub poll_secret: String,
    pub expires_in_seconds: u64,
    /// Poll no more often than this.
    pub interval_seconds: u64,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub poll_secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PollAnswer {
    /// `pending` (ask again) or `paired` (with the credential).
    pub status: String,
    pub agent_id: String,
    /// The agent's bearer credential (`kwa_…`): answered once, stored by the
    /// server as an HMAC only.
    pub credential: Option<String>,
    /// `account:LOGIN` or `token:NAME`.
    pub owner: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The pairing code the agent printed (`XXXX-XXXX`; case and dash do not matter).
    pub code: String,
    /// Pair the agent to this account (operator or user login) instead of
    /// the caller: administrators only.
    #[serde(default)]
    pub account: Option<String>,
}

/// One device as the agent identified it (keyward-transport discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedDevice {
    /// Decimal serial number.
    pub serial: String,
    /// Canonical device type (`yubikey5`, `c4000`, `piv`).
    pub device_type: String,
    #[serde(default)]
    pub firmware: Option<String>,
    #[serde(default)]
    pub applets: Vec<String>,
    #[serde(default)]
    pub transports: Vec<String>,
    /// The reader (or HID path) on the workstation.
    #[serde(default)]
    pub reader: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    /// Every supported device connected now (the whole set, each time).
    pub devices: Vec<ReportedDevice>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportAnswer {
    /// Serials that arrived since the previous report.
    pub arrived: Vec<String>,
    /// Serials that were removed since the previous report.
    pub removed: Vec<String>,
}

/// A device connected to one of the caller's agents.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDeviceView {
    pub agent_id: String,
    pub agent_name: String,
    pub agent_online: bool,
    #[serde(flatten)]
    pub device: ReportedDevice,
    /// Inventory state (`available`, `issued`, …); null when the inventory
    /// does not know the device.
    pub state: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDevicesView {
    /// Pass it back as `since` to wait for the next change.
    pub version: u64,
    /// The caller's paired agents.
    pub agents: Vec<AgentView>,
    pub devices: Vec<AgentDeviceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusyBatch {
    pub session_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkRequest {
    /// Batches the agent is running now (not delivered again).
    #[serde(default)]
    pub busy: Vec<BusyBatch>,
    /// Sessions whose device the agent holds on an open connection (from a
    /// session's first batch to its end).
    #[serde(default)]
    pub held: Vec<String>,
    /// Seconds to wait for work (at most 25; default 25).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

/// A command batch and the device (serial) to run it on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkItem {
    pub serial: String,
    pub batch: RelayBatch,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkAnswer {
    /// Command batches to run, one per session at most.
    pub items: Vec<WorkItem>,
    /// Of the sessions the agent says it holds, those no longer running
    /// with it (ended, cancelled, abandoned): the agent ends their
    /// connections (with a reset: no security state outlives a session).
    #[serde(default)]
    pub released: Vec<String>,
}

/// An agent as the API shows it (no secret, no hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    /// `pending`, `expired` (a pending code past its time), `paired`, `revoked`.
    pub status: String,
    /// `account:LOGIN` or `token:NAME` once paired.
    pub owner: Option<String>,
    pub online: bool,
    pub created_at: String,
    pub approved_at: Option<String>,
    pub approved_by: Option<String>,
    pub revoked_at: Option<String>,
    pub last_seen_at: Option<String>,
}

crate::redacted_debug!(PairingStarted { agent_id, expires_in_seconds, interval_seconds } hides { code, poll_secret });

crate::redacted_debug!(PollRequest {  } hides { poll_secret });

crate::redacted_debug!(ApproveRequest { account } hides { code });
