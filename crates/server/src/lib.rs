//! The Keyward server: REST API under `/api/v1` (with its OpenAPI document),
//! health and metrics, authentication and roles, the audit trail, and the
//! store behind them. `keyward serve` and `keyward demo` start it.

pub mod agents;
pub mod api;
pub mod app;
pub mod attestation;
pub mod audit_checkpoints;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod connections;
pub mod demo;
pub mod demo_passkeys;
pub mod enrollment;
pub mod entra;
pub mod error;
pub mod graph_probe;
pub mod initial_pin;
pub mod issuance;
pub mod jobs;
pub mod json;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod secrets;
pub mod sign_in;
pub mod start;
pub mod web;

pub use start::{Server, StartOptions};
