//! The production Microsoft Graph client for Entra ID passkey provisioning.
//!
//! * OAuth2 client credentials against `{authority}/{tenant}/oauth2/v2.0/token`
//!   with the configured scope (never derived from the Graph URL); the token
//!   is cached until shortly before it expires.
//! * 429 and 503 are retried after `Retry-After`, a bounded number of times.
//! * `creationOptions`, `POST fido2Methods`, list and `DELETE` under
//!   `{graph}/{v1.0|beta}/users/{id}/authentication/fido2Methods`.
//! * Failures become [`GraphError`]s that say what to fix.
//!
//! Real HTTP over rustls (reqwest). Secrets and tokens are never logged.

pub mod assertion;
mod client;
mod error;
pub mod model;

pub use assertion::ClientCertificate;
pub use client::{ApiVersion, GraphClient, GraphConfig, RetryPolicy};
pub use error::{GraphError, PASSKEY_PERMISSIONS};
pub use model::{
    AttestationResponse, CreationOptions, Fido2Method, NewFido2Method, PublicKeyCreationOptions,
    PublicKeyCredential,
};
