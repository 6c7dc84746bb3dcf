//! Store errors: what the API layer maps to 404, 409 and 500.

use keyward_domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No record of `entity` with that key (`user`, `login=alice`).
    #[error("{entity} not found: {key}")]
    NotFound { entity: &'static str, key: String },
    /// A uniqueness or optimistic-concurrency conflict. `code` is stable
    /// (`duplicate_login`, `duplicate_serial`, `version_conflict`, `in_use`), `field`
    /// names the input field.
    #[error("{field}: {message} ({code})")]
    Conflict {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// The input broke a domain rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The database failed (connection, I/O, bad data). Never carries secrets.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored row no longer parses (hand-edited database, newer schema).
    #[error("corrupt {entity} record: {message}")]
    Corrupt {
        entity: &'static str,
        message: String,
    },
}

impl StoreError {
    /// A stable snake_case code for the JSON error shape.
    pub fn code(&self) -> &str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::Conflict { code, .. } => code,
            StoreError::Validation(v) => &v.code,
            StoreError::Backend(_) | StoreError::Migration(_) => "database_error",
            StoreError::Corrupt { .. } => "corrupt_record",
        }
    }

    /// The offending input field, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            StoreError::Conflict { field, .. } => Some(field),
            StoreError::Validation(v) => Some(&v.field),
            _ => None,
        }
    }

    pub(crate) fn not_found(entity: &'static str, key: impl std::fmt::Display) -> Self {
        StoreError::NotFound {
            entity,
            key: key.to_string(),
        }
    }

    pub(crate) fn corrupt(entity: &'static str, message: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            entity,
            message: message.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// True when `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// True when `e` is a foreign-key violation (a referenced row is missing or in use).
pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}
