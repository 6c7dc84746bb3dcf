//! The one validation error type used by every layer.
//!
//! `code` is a stable snake_case identifier clients can switch on, `field` is a path
//! into the input (`pin_application.min_length`, `rows[3].login`), `message` is for
//! people. Messages never carry secrets (PINs, PUKs, keys, passwords).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message} ({code})")]
pub struct ValidationError {
    pub code: String,
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(
        code: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code: code.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, its field nested under `prefix` (`pin` -> `policy.pin`).
    pub fn within(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }

    /// An enum value outside the canonical set.
    pub fn unknown_value(field: &str, got: &str, allowed: &[&str]) -> Self {
        // The rejected value is echoed (shortened): enum inputs are never secrets.
        let shown: String = got.chars().take(40).collect();
        Self::new(
            "unknown_value",
            field,
            format!("unknown {field} '{shown}'; allowed: {}", allowed.join(", ")),
        )
    }
}

pub type ValidationResult<T = ()> = Result<T, ValidationError>;
