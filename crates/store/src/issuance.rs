//! Records of issuance sessions and of the credentials they put on devices.
//! The session's engine state is opaque here: the server seals it (it holds
//! PINs and keys) before it reaches the store.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceSession {
    pub id: Uuid,
    pub device_id: Uuid,
    pub user_id: Uuid,
    pub policy_id: Uuid,
    /// `issue` or `assign`.
    pub action: String,
    /// `running`, `issued`, `assigned`, `failed`, `cancelled`.
    pub status: String,
    pub step: String,
    pub seq: i64,
    #[serde(skip)]
    pub sealed_state: Vec<u8>,
    /// JSON failure report.
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuanceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuanceSession")
            .field("id", &self.id)
            .field("device_id", &self.device_id)
            .field("status", &self.status)
            .field("step", &self.step)
            .field("seq", &self.seq)
            .field("sealed_state", &format_args!("<{} sealed bytes>", self.sealed_state.len()))
            .finish_non_exhaustive()
    }
}

/// What a step of a session changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceUpdate {
    pub status: String,
    pub step: String,
    pub seq: i64,
    pub sealed_state: Vec<u8>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: Uuid,
    pub device_id: Uuid,
    pub session_id: Uuid,
    /// `certificate` or `passkey`.
    pub kind: String,
    pub slot: Option<String>,
    pub serial: String,
    pub not_after: Option<OffsetDateTime>,
    #[serde(skip)]
    pub der: Option<Vec<u8>>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}
