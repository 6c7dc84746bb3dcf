//! Audit events: who did what to which target, when, and how it ended. Details are
//! JSON; any value under a secret-looking key is replaced before it is stored, so a
//! careless caller cannot write a PIN into the trail.

use crate::names::AuditOutcome;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// An event to append (the store adds sequence number and MAC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    /// `account:admin`, `token:ci`, `system`.
    pub actor: String,
    /// Dotted verb: `user.create`, `device.state`, `settings.set`.
    pub action: String,
    /// What it acted on: `user:alice`, `device:12345678`.
    pub target: String,
    pub outcome: AuditOutcome,
    pub details: Value,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: AuditOutcome,
    pub details: Value,
}

/// The unkeyed hash chain beside the MAC chain: anyone holding the records
/// recomputes it, no key needed, and a checkpoint of its head signed with
/// a key kept apart from the KEK proves that no record up to it changed,
/// even to someone who holds the KEK (and could recompute every MAC).
/// `H(n) = SHA-256("keyward-audit-hash-v1" ‖ H(n-1) ‖ seq ‖ each field
/// length-prefixed)`, `H(0)` all zeros; the fields as the API shows them.
pub fn chain_hash(prev: &[u8; 32], e: &AuditEvent) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"keyward-audit-hash-v1");
    h.update(prev);
    h.update(e.seq.to_be_bytes());
    let at =
        e.at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
    let details = serde_json::to_string(&e.details).unwrap_or_default();
    for field in [
        at.as_str(),
        &e.actor,
        &e.action,
        &e.target,
        e.outcome.as_str(),
        &details,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// A signed checkpoint of the hash chain's head: after record `seq` the
/// chain's hash is `hash` (hex); `signature` (base64, DER ECDSA P-256 over
/// [`Checkpoint::message`]) by the server's audit signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub signature: String,
}

impl Checkpoint {
    /// What the signature covers.
    pub fn message(seq: i64, hash: &str, at: OffsetDateTime) -> Vec<u8> {
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        format!("keyward-audit-checkpoint-v1\nseq={seq}\nhash={hash}\nat={at}\n").into_bytes()
    }
}

/// Key fragments that mark a secret (matched case-insensitively inside the key).
const SECRET_KEY_PARTS: &[&str] = &[
    "pin", "puk", "password", "secret", "token", "key", "otp", "code",
];
pub const REDACTED: &str = "[redacted]";

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    // Names that contain a secret word but describe no secret.
    const ALLOWED: &[&str] = &[
        "pin_display_mode",
        "key_usage",
        "token_name",
        "token_id",
        "management_key_mode",
        "pin_policy",
        "pin_retry_count",
        "puk_retry_count",
        "key_id",
        "role",
    ];
    // `a` itself, or `a` after a '_' or '.' (audit details are redacted on
    // every write: no allocation per name).
    let names = |a: &str| {
        k == a
            || k.strip_suffix(a)
                .is_some_and(|head| head.ends_with('_') || head.ends_with('.'))
    };
    if ALLOWED.iter().any(|a| names(a)) {
        return false;
    }
    SECRET_KEY_PARTS.iter().any(|p| {
        k.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == *p)
            || k.ends_with(p)
    })
}

/// Replaces every value under a secret-looking key, at any depth.
pub fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if is_secret_key(k) {
                    *val = Value::String(REDACTED.into());
                } else {
                    redact_secrets(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

impl AuditDraft {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: AuditOutcome::Success,
            details: Value::Object(Default::default()),
        }
    }

    pub fn outcome(mut self, o: AuditOutcome) -> Self {
        self.outcome = o;
        self
    }

    /// Sets the details (secret-looking keys redacted).
    pub fn details(mut self, mut d: Value) -> Self {
        redact_secrets(&mut d);
        self.details = d;
        self
    }

    /// Adds one detail (redacted if the key looks secret).
    pub fn detail(mut self, k: &str, v: impl Into<Value>) -> Self {
        let mut v = v.into();
        if is_secret_key(k) {
            v = Value::String(REDACTED.into());
        } else {
            redact_secrets(&mut v);
        }
        if !self.details.is_object() {
            self.details = Value::Object(Default::default());
        }
        self.details
            .as_object_mut()
            .expect("object")
            .insert(k.to_string(), v);
        self
    }

    /// Canonical bytes of an event with its sequence number and time: length-prefixed
    /// fields so no two events encode alike (for signing or exporting events). The
    /// store's audit chain does not use this: its MAC covers the exact stored JSON
    /// text and leaves the sequence number to the chain (see `keyward-store`).
    pub fn canonical_bytes(&self, seq: i64, at_unix_nanos: i128) -> Vec<u8> {
        let mut details = self.details.clone();
        redact_secrets(&mut details);
        let d = serde_json::to_vec(&details).expect("JSON value serialises");
        let mut out = Vec::with_capacity(64 + d.len());
        out.extend_from_slice(b"keyward-audit-v1");
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&at_unix_nanos.to_be_bytes());
        for f in [
            self.actor.as_bytes(),
            self.action.as_bytes(),
            self.target.as_bytes(),
            self.outcome.as_str().as_bytes(),
            &d,
        ] {
            out.extend_from_slice(&(f.len() as u64).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }
}

impl AuditEvent {
    pub fn draft(&self) -> AuditDraft {
        AuditDraft {
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            outcome: self.outcome,
            details: self.details.clone(),
        }
    }

    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.draft()
            .canonical_bytes(self.seq, self.at.unix_timestamp_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_chain_covers_every_field_and_the_previous_hash() {
        let e = AuditEvent {
            seq: 7,
            at: OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap(),
            actor: "account:admin".into(),
            action: "device.state".into(),
            target: "device:1".into(),
            outcome: AuditOutcome::Success,
            details: serde_json::json!({ "to": "invalid" }),
        };
        let base = chain_hash(&[0; 32], &e);
        assert_eq!(base, chain_hash(&[0; 32], &e.clone()));
        assert_ne!(base, chain_hash(&[1; 32], &e));
        let changed = [
            AuditEvent {
                seq: 8,
                ..e.clone()
            },
            AuditEvent {
                actor: "account:eve".into(),
                ..e.clone()
            },
            AuditEvent {
                action: "device.stat".into(),
                ..e.clone()
            },
            AuditEvent {
                target: "device:2".into(),
                ..e.clone()
            },
            AuditEvent {
                outcome: AuditOutcome::Failure,
                ..e.clone()
            },
            AuditEvent {
                details: serde_json::json!({ "to": "issued" }),
                ..e.clone()
            },
            AuditEvent {
                at: e.at + time::Duration::seconds(1),
                ..e.clone()
            },
            // Moving a byte between fields changes it too (length-prefixed).
            AuditEvent {
                actor: "account:admi".into(),
                action: "ndevice.state".into(),
                ..e.clone()
            },
        ];
        for c in &changed {
            assert_ne!(chain_hash(&[0; 32], c), base, "{c:?}");
        }
    }
    use serde_json::json;

    #[test]
    fn secrets_are_redacted() {
        let d = AuditDraft::new("account:admin", "device.issue", "device:1")
            .detail("pin", "123456")
            .detail("initial_pin", "654321")
            .detail("client_secret", "s3cr3t")
            .detail("serial", "42")
            .detail(
                "nested",
                json!({"puk": "12345678", "list": [{"password": "x"}], "ok": 1}),
            )
            .detail("initial_pin_display_mode", "displayed")
            .detail("pin_retry_count", 3);
        let s = serde_json::to_string(&d.details).unwrap();
        for secret in ["123456", "654321", "s3cr3t", "12345678", "\"x\""] {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(
            s.contains("\"serial\":\"42\"")
                && s.contains("displayed")
                && s.contains("\"pin_retry_count\":3"),
            "{s}"
        );
        let d2 = AuditDraft::new("a", "b", "c").details(json!({"management_key": "0102"}));
        assert_eq!(d2.details["management_key"], REDACTED);
    }

    #[test]
    fn canonical_bytes_separate_fields() {
        let a = AuditDraft::new("ab", "c", "d").canonical_bytes(1, 0);
        let b = AuditDraft::new("a", "bc", "d").canonical_bytes(1, 0);
        assert_ne!(a, b);
        assert_ne!(
            AuditDraft::new("a", "b", "c").canonical_bytes(1, 0),
            AuditDraft::new("a", "b", "c").canonical_bytes(2, 0)
        );
    }
}
