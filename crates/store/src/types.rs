//! Records and query shapes the store works with, beside the domain types.

use keyward_domain::{Role, ValidationError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One page of a keyset-paginated listing. `next` is an opaque cursor for the
/// following page (`after`), None on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UserSearchField {
    /// Case-sensitive login prefix.
    #[default]
    Login,
    /// Case-insensitive display-name prefix.
    DisplayName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSearch {
    /// Prefix to match; empty lists everyone.
    pub prefix: String,
    pub by: UserSearchField,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to [`MAX_PAGE`] (clamped).
    pub limit: u32,
}

pub const MAX_PAGE: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceFilter {
    pub state: Option<keyward_domain::DeviceState>,
    pub device_type: Option<keyward_domain::DeviceType>,
    pub assigned_user: Option<Uuid>,
    pub device_policy: Option<Uuid>,
    /// Serial prefix (decimal digits).
    pub serial_prefix: Option<String>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size (clamped to 1..=MAX_PAGE; 0 means 50).
    pub limit: u32,
}

/// How a batch import treats bad rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    /// Any bad row (invalid, duplicate in the batch or in the store) rejects the whole
    /// import; nothing is written.
    #[default]
    AllOrNothing,
    /// Write the good rows, report each rejected one.
    SkipInvalid,
}

/// One rejected row: `row` is the 0-based index in the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRejection {
    pub row: usize,
    pub error: ValidationError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImportReport {
    pub inserted: u64,
    pub rejected: Vec<RowRejection>,
}

/// A browser session. The store keeps a hash of the cookie value, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hash: Vec<u8>,
    pub account_id: Uuid,
    pub csrf_token: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// An API token record: the HMAC of the token bytes, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    #[serde(skip)]
    pub token_hmac: Vec<u8>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// `None` only for a token made before expiry existed, until the next
    /// start gives it one.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
}

/// The audit chain's head: how many records, and the last record's MAC. The server
/// checkpoints it to its log so deleting the newest records is detected too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub count: i64,
    #[serde(with = "hex_bytes")]
    pub last_mac: Vec<u8>,
}

/// A broken link found by [`crate::Store::verify_audit_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum AuditProblem {
    /// The record's contents do not match its MAC.
    Changed { seq: i64 },
    /// Records are missing: `first..=last` by sequence number (the record at
    /// `before_seq` follows the gap).
    Deleted {
        first: i64,
        last: i64,
        before_seq: i64,
    },
    /// The record is intact but sits out of place: its predecessor is `belongs_after`.
    Reordered { seq: i64, belongs_after: i64 },
    /// The newest records are gone: the head counts `head_count`, the last record
    /// present is `last_seq` (or the head's MAC is not the last record's).
    Truncated { head_count: i64, last_seq: i64 },
    /// The record before `seq` is gone and the sequence numbers were closed up.
    PredecessorMissing { seq: i64 },
    /// Records exist past the head's count (written around the store).
    BeyondHead { head_count: i64, last_seq: i64 },
    /// The log does not reach a checkpoint recorded earlier (e.g. in the server log).
    CheckpointMissing { count: i64 },
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditProblem::Changed { seq } => write!(f, "record {seq} was changed"),
            AuditProblem::Deleted { first, last, before_seq } if first == last => {
                write!(f, "record {first} was deleted (before record {before_seq})")
            }
            AuditProblem::Deleted { first, last, before_seq } => {
                write!(f, "records {first} to {last} were deleted (before record {before_seq})")
            }
            AuditProblem::Reordered { seq, belongs_after } => {
                write!(f, "record {seq} was moved: it belongs after record {belongs_after}")
            }
            AuditProblem::Truncated { head_count, last_seq } => write!(
                f,
                "the log was truncated: the head counts {head_count} records, the last present is {last_seq}"
            ),
            AuditProblem::PredecessorMissing { seq } => {
                write!(f, "the record before record {seq} was deleted and the rest renumbered")
            }
            AuditProblem::BeyondHead { head_count, last_seq } => write!(
                f,
                "records {} to {last_seq} were added outside Keyward (the head counts {head_count})",
                head_count + 1
            ),
            AuditProblem::CheckpointMissing { count } => {
                write!(f, "the log does not match the checkpoint at record {count}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// Records read.
    pub records: i64,
    pub head: AuditCheckpoint,
    pub problems: Vec<AuditProblem>,
}

impl AuditVerification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&keyward_domain::validate::to_hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        keyward_domain::validate::hex_bytes("last_mac", &s, 64)
            .map_err(|e| serde::de::Error::custom(e.message))
    }
}
