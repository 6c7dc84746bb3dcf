//! Keyward's integration tests, one binary (issue 20): each module is one
//! area, as the separate test binaries were; `support` starts servers and
//! seeds data, `common` holds the agent, PC/SC and self-service helpers.
//! One binary links the server once instead of once per area.
//!
//! Run one area: `cargo test -p keyward --test integration revocation::`.

mod common;
mod support;

mod agent_demo;
mod agent_issuance;
mod agent_pairing;
mod agent_pcsc;
mod agent_relay;
mod agent_wake;
mod api_input;
mod api_roles;
mod backup;
mod cli_admin;
mod demo_and_postgres;
mod devices;
mod entra_demo;
mod entra_issue;
mod issuance_matrix;
mod issuance_matrix_races;
mod issuance_relay;
mod issue_cli;
mod passkey_certificate;
mod pki_endpoints;
mod portal_change_pin;
mod portal_http;
mod portal_self_issuance;
mod recycle_agent;
mod recycle_cli;
mod requests;
mod revocation;
mod sealed_session_upgrade;
mod secrets_scan;
mod security;
mod sessions;
mod tls;
mod unlock;
mod update;
mod upgrade;
mod vcard_fido;
mod vcard_pcsc;
