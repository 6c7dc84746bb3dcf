//! The admin subcommands, each a thin call of the REST API.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::output::{print_list, print_object};
use crate::api::{enc, ApiClient, Body};
use keyward_proto::views::{DeviceActionRequest, DeviceDetails, IncidentRequest};
use keyward_proto::{
    AuditVerifyReport, ImportReport, OperatorCreated, Page, PasskeyServiceTestReport, TokenCreated,
};

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add one user.
    Add {
        login: String,
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        upn: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Directory attribute NAME=VALUE (repeatable), e.g. objectSid=S-1-5-…
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attributes: Vec<String>,
    },
    /// Import users from a CSV file (docs/cli.md lists the columns).
    Import {
        file: PathBuf,
        /// Import the good rows and report the bad ones (default: any bad row
        /// rejects the whole import).
        #[arg(long)]
        partial: bool,
    },
    /// List users, optionally by login prefix.
    List {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one user.
    Show { login: String },
    /// Create a one-time enrollment code with which the user sets a first password.
    EnrollmentCode { login: String },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Add an operator (prints a one-time password once).
    Add {
        login: String,
        /// administrator, issuance_operator, help_desk or user
        #[arg(long)]
        role: String,
        /// For role `user`: the user this self-service account belongs to.
        #[arg(long)]
        user: Option<String>,
    },
    /// List operators.
    List,
    /// Disable an account: it can no longer sign in; its sessions end.
    Disable { login: String },
    /// Enable a disabled account.
    Enable { login: String },
    /// Change an account's role.
    SetRole {
        login: String,
        /// administrator, issuance_operator or help_desk
        role: String,
    },
    /// Reset an account's password: prints a one-time password once (changed
    /// at the next sign-in); the account's sessions end.
    ResetPassword { login: String },
    /// End all of an account's browser sessions.
    SignOut { login: String },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Import devices from a CSV file (device_type,serial,firmware_version,atr).
    Import {
        file: PathBuf,
        #[arg(long)]
        partial: bool,
    },
    /// List devices.
    List {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        device_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one device with its history.
    Show { serial: String },
    /// Declare an incident on an issued device (its certificates are revoked
    /// or, when forgotten, put on hold; its passkeys deleted unless forgotten).
    Incident {
        serial: String,
        /// lost, stolen, damaged, forgotten or expired.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Restore a forgotten device that turned up again (the hold is released).
    Restore {
        serial: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Terminate a device for good (its certificates revoked, passkeys deleted).
    Terminate {
        serial: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Suspend an issued device: its certificates go on hold, its passkeys
    /// are deleted (and flagged to be registered again).
    Suspend {
        serial: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Resume a suspended device: the hold is released.
    Resume {
        serial: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Create an unlock request: the person unlocks the device in the User
    /// Portal, through their own agent, before it expires.
    UnlockRequest { serial: String },
    /// Offline unlock, the help desk's side: the response to the challenge
    /// the person's `keyward unlock --offline` shows (a C4000), or, without
    /// --challenge, a YubiKey's PUK (disclosed and audited; the next unlock
    /// replaces it). Printed with the policy's PIN rules to tell the person.
    UnlockResponse {
        serial: String,
        #[arg(long)]
        challenge: Option<String>,
    },
    /// Request Update: re-apply the device's policy (or another that fits
    /// it); prints the applied changes. Pending until the device is next
    /// connected (`keyward update`, or the person in the User Portal).
    RequestUpdate {
        serial: String,
        #[arg(long)]
        policy: Option<String>,
        /// Show the changes only; request nothing.
        #[arg(long)]
        preview: bool,
    },
    /// Cancel Update Request: withdraw the device's pending update.
    CancelUpdate { serial: String },
    /// The renewal scan (the job runner runs it daily): an update request
    /// for every device with a certificate inside its renewal window.
    RenewalScan {
        /// The time to scan for (RFC 3339; default now).
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or replace device policies from a TOML or JSON file.
    Import { file: PathBuf },
    /// List device policies.
    List,
    /// Show one device policy.
    Show { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Show all settings.
    Show,
    /// Set one setting (docs/cli.md lists the keys).
    Set { key: String, value: String },
}

#[derive(Subcommand, Debug)]
pub enum PasskeyServiceCommand {
    /// Configure a Passkey-Enabled Service (the client secret is read from
    /// stdin, or a certificate credential is read from files).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant_id: String,
        #[arg(long)]
        client_id: String,
        /// Read the client secret from standard input (never a flag).
        #[arg(
            long,
            required_unless_present = "client_certificate",
            conflicts_with = "client_certificate"
        )]
        client_secret_stdin: bool,
        /// A certificate credential instead of a secret: the certificate (PEM file).
        #[arg(long, value_name = "FILE", requires = "client_private_key")]
        client_certificate: Option<std::path::PathBuf>,
        /// The certificate's RSA private key (PEM file); stored sealed by the server.
        #[arg(long, value_name = "FILE", requires = "client_certificate")]
        client_private_key: Option<std::path::PathBuf>,
        #[arg(long)]
        authority_url: Option<String>,
        #[arg(long)]
        graph_url: Option<String>,
        #[arg(long)]
        scope: Option<String>,
    },
    /// List Passkey-Enabled Services.
    List,
    /// Test connection: get a token and list a user's fido2Methods.
    Test {
        name: String,
        /// UPN or object id of a user to list.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token (printed once).
    Create {
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Days it lasts (default and most: the server's token_days, 90).
        #[arg(long)]
        days: Option<u32>,
    },
    /// List API tokens.
    List,
    /// Revoke an API token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the audit trail's MAC chain (exit 1 if broken); with
    /// `--checkpoints`, also that no record up to each signed checkpoint
    /// changed, with the public key alone.
    Verify {
        /// The server's signed checkpoints (`audit-checkpoints.jsonl`).
        #[arg(long, requires = "public_key")]
        checkpoints: Option<PathBuf>,
        /// The public key that signs them (`audit-signing-key.pem.pub`),
        /// kept apart from the server.
        #[arg(long, requires = "checkpoints")]
        public_key: Option<PathBuf>,
    },
    /// List audit records.
    List {
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub fn dispatch(
    c: &ApiClient,
    json: bool,
    command: super::AdminCommand,
) -> anyhow::Result<ExitCode> {
    use super::AdminCommand as A;
    match command {
        A::User(cmd) => user(c, json, cmd),
        A::Operator(cmd) => operator(c, json, cmd),
        A::Device(cmd) => device(c, json, cmd),
        A::Policy(cmd) => policy(c, json, cmd),
        A::Settings(cmd) => settings(c, json, cmd),
        A::PasskeyService(cmd) => passkey_service(c, json, cmd),
        A::Token(cmd) => token(c, json, cmd),
        A::Audit(cmd) => audit(c, json, cmd),
        A::Agent(cmd) => super::agent::run(c, json, cmd),
        A::Job(cmd) => super::lifecycle::job(c, json, cmd),
        A::Report(cmd) => super::lifecycle::report(c, json, cmd),
        A::Request(cmd) => super::requests::run(c, json, cmd),
    }
}

const USER_COLUMNS: &[(&str, &str)] = &[
    ("login", "LOGIN"),
    ("display_name", "DISPLAY NAME"),
    ("upn", "UPN"),
    ("email", "EMAIL"),
    ("status", "STATUS"),
];

const DEVICE_COLUMNS: &[(&str, &str)] = &[
    ("serial", "SERIAL"),
    ("device_type", "TYPE"),
    ("firmware_version", "FIRMWARE"),
    ("state", "STATE"),
    ("reason", "REASON"),
    ("version", "VERSION"),
];

fn user(c: &ApiClient, json: bool, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            login,
            display_name,
            upn,
            email,
            attributes,
        } => {
            let mut attrs = serde_json::Map::new();
            for a in attributes {
                let (k, v) = a
                    .split_once('=')
                    .with_context(|| format!("--attr {a}: expected NAME=VALUE"))?;
                attrs.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut body = serde_json::Map::new();
            body.insert("login".into(), json!(login));
            body.insert("display_name".into(), json!(display_name));
            body.insert("attributes".into(), Value::Object(attrs));
            for (k, v) in [("upn", upn), ("email", email)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            print_object(json, &c.post("/users", &body)?);
        }
        UserCommand::Import { file, partial } => {
            import_csv(c, json, "/users/import", &file, partial)?
        }
        UserCommand::List {
            prefix,
            limit,
            after,
        } => {
            let mut q = format!("/users?limit={limit}");
            if let Some(p) = prefix {
                q.push_str(&format!("&prefix={}", enc(&p)));
            }
            if let Some(a) = after {
                q.push_str(&format!("&after={}", enc(&a)));
            }
            let page: Page<Value> = c.get(&q)?;
            print_list(json, &serde_json::to_value(&page)?, USER_COLUMNS);
            if !json {
                if let Some(next) = &page.next {
                    eprintln!("more: --after {next}");
                }
            }
        }
        UserCommand::Show { login } => {
            print_object(json, &c.get(&format!("/users/{}", enc(&login)))?)
        }
        UserCommand::EnrollmentCode { login } => {
            let v = c.post(
                &format!("/users/{}/enrollment-code", enc(&login)),
                &json!({}),
            )?;
            print_object(json, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends a CSV file in one request: the server checks every row and, by
/// default, writes all or nothing in one transaction (imports may be up to
/// 512 MiB, about seven million users).
fn import_csv(
    c: &ApiClient,
    json: bool,
    path: &str,
    file: &Path,
    partial: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if text.trim().is_empty() {
        bail!("{}: the CSV file is empty", file.display());
    }
    let q = if partial {
        format!("{path}?partial=true")
    } else {
        path.to_string()
    };
    let report: ImportReport = c.call(reqwest::Method::POST, &q, Body::<()>::Csv(text))??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("imported {} row(s)", report.imported);
        for r in &report.rejected {
            println!(
                "rejected row {}: {} [{}] {}",
                r.row, r.field, r.code, r.message
            );
        }
    }
    Ok(())
}

fn operator(c: &ApiClient, json: bool, cmd: OperatorCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OperatorCommand::Add { login, role, user } => {
            let v = c.post(
                "/operators",
                &json!({ "login": login, "role": role, "user_login": user }),
            )?;
            let v: OperatorCreated = v;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                println!("created {} ({})", v.operator.login, v.operator.role);
                println!("one-time password: {}", v.one_time_password);
                println!("(shown once; it must be changed at first sign-in)");
            }
        }
        OperatorCommand::List => print_list(
            json,
            &c.get("/operators")?,
            &[
                ("login", "LOGIN"),
                ("role", "ROLE"),
                ("user_login", "USER"),
                ("must_change_password", "MUST CHANGE"),
                ("disabled", "DISABLED"),
            ],
        ),
        OperatorCommand::Disable { login } => print_object(
            json,
            &c.post(&format!("/operators/{}/disable", enc(&login)), &json!({}))?,
        ),
        OperatorCommand::Enable { login } => print_object(
            json,
            &c.post(&format!("/operators/{}/enable", enc(&login)), &json!({}))?,
        ),
        OperatorCommand::SignOut { login } => print_object(
            json,
            &c.post(&format!("/operators/{}/sign-out", enc(&login)), &json!({}))?,
        ),
        OperatorCommand::SetRole { login, role } => print_object(
            json,
            &c.put(
                &format!("/operators/{}/role", enc(&login)),
                &json!({ "role": role }),
            )?,
        ),
        OperatorCommand::ResetPassword { login } => {
            let v: OperatorCreated = c.post(
                &format!("/operators/{}/reset-password", enc(&login)),
                &json!({}),
            )?;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                println!(
                    "one-time password for {}: {}",
                    v.operator.login, v.one_time_password
                );
                println!("(shown once; it must be changed at the next sign-in; the account's sessions ended)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The device's version now (an action names the version it acts on).
fn device_version(c: &ApiClient, serial: &str) -> anyhow::Result<i64> {
    let d: DeviceDetails = c.get(&format!("/devices/{}", enc(serial)))?;
    Ok(d.device.version)
}

/// Restore, terminate, suspend or resume one device.
fn device_action(
    c: &ApiClient,
    serial: &str,
    action: &str,
    note: Option<String>,
) -> anyhow::Result<Value> {
    let body = DeviceActionRequest {
        note,
        expected_version: device_version(c, serial)?,
    };
    c.post(&format!("/devices/{}/{action}", enc(serial)), &body)
}

fn device(c: &ApiClient, json: bool, cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCommand::Import { file, partial } => {
            import_csv(c, json, "/devices/import", &file, partial)?
        }
        DeviceCommand::List {
            prefix,
            state,
            device_type,
            limit,
        } => {
            let mut q = format!("/devices?limit={limit}");
            for (k, v) in [
                ("prefix", prefix),
                ("state", state),
                ("device_type", device_type),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(&v)));
                }
            }
            print_list(json, &c.get(&q)?, DEVICE_COLUMNS);
        }
        DeviceCommand::Incident {
            serial,
            reason,
            note,
        } => {
            let expected_version = device_version(c, &serial)?;
            let body = IncidentRequest {
                reason,
                note,
                expected_version,
            };
            let v: Value = c.post(&format!("/devices/{}/incident", enc(&serial)), &body)?;
            print_object(json, &v);
        }
        DeviceCommand::Restore { serial, note } => {
            print_object(json, &device_action(c, &serial, "restore", note)?)
        }
        DeviceCommand::Terminate { serial, note } => {
            print_object(json, &device_action(c, &serial, "terminate", note)?)
        }
        DeviceCommand::Suspend { serial, note } => {
            print_object(json, &device_action(c, &serial, "suspend", note)?)
        }
        DeviceCommand::Resume { serial, note } => {
            print_object(json, &device_action(c, &serial, "resume", note)?)
        }
        DeviceCommand::UnlockRequest { serial } => {
            let v: Value = c.post(
                &format!("/devices/{}/unlock-requests", enc(&serial)),
                &serde_json::json!({}),
            )?;
            print_object(json, &v);
        }
        DeviceCommand::RequestUpdate {
            serial,
            policy,
            preview,
        } => {
            let v: keyward_proto::UpdateRequestView = if preview {
                let query = policy
                    .map(|p| format!("?policy={}", enc(&p)))
                    .unwrap_or_default();
                c.get(&format!("/devices/{}/update-preview{query}", enc(&serial)))?
            } else {
                c.post(
                    &format!("/devices/{}/update-requests", enc(&serial)),
                    &keyward_proto::UpdateRequestCreate { policy },
                )?
            };
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                let what = if preview {
                    "would apply"
                } else {
                    "update requested:"
                };
                println!("device {} ({}) {what}", v.serial, v.policy);
                for ch in &v.changes {
                    println!("  - {}", ch.description);
                }
                if v.changes.is_empty() {
                    println!("  - the policy only (no change on the device)");
                }
            }
        }
        DeviceCommand::CancelUpdate { serial } => {
            c.delete(&format!("/devices/{}/update-requests", enc(&serial)))?;
            if !json {
                println!("the update request of device {serial} is cancelled");
            } else {
                print_object(
                    true,
                    &serde_json::json!({ "serial": serial, "cancelled": true }),
                );
            }
        }
        DeviceCommand::RenewalScan { at } => {
            let at = at
                .map(|a| {
                    time::OffsetDateTime::parse(&a, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| anyhow::anyhow!("--at: not an RFC 3339 time: {e}"))
                })
                .transpose()?;
            let v: keyward_proto::RenewalScanResult = c.post(
                "/update-requests/scan",
                &keyward_proto::RenewalScanRequest { at },
            )?;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                println!(
                    "{} issued devices scanned; update requested for {}",
                    v.scanned,
                    if v.requested.is_empty() {
                        "none".to_string()
                    } else {
                        v.requested.join(", ")
                    }
                );
                for r in &v.refused {
                    println!(
                        "device {}: not requested ({}): {}",
                        r.serial, r.code, r.message
                    );
                }
            }
        }
        DeviceCommand::UnlockResponse { serial, challenge } => {
            let v: keyward_proto::OfflineUnlockAnswer = c.post(
                &format!("/devices/{}/offline-unlock", enc(&serial)),
                &keyward_proto::OfflineUnlockRequest { challenge },
            )?;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                let what = if v.kind == "puk" { "PUK" } else { "response" };
                println!("{what}: {}", v.value);
                println!("the new PIN must follow these rules:");
                for rule in &v.pin_rules {
                    println!("  - {rule}");
                }
            }
        }
        DeviceCommand::Show { serial } => {
            let v: DeviceDetails = c.get(&format!("/devices/{}", enc(&serial)))?;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                let shown = DeviceDetails {
                    history: Vec::new(),
                    ..v.clone()
                };
                let mut shown = serde_json::to_value(&shown)?;
                if let Some(o) = shown.as_object_mut() {
                    o.remove("history");
                }
                print_object(false, &shown);
                println!();
                print_list(
                    false,
                    &serde_json::to_value(&v.history)?,
                    &[
                        ("at", "AT"),
                        ("actor", "BY"),
                        ("from_state", "FROM"),
                        ("to_state", "TO"),
                        ("to_reason", "REASON"),
                        ("note", "NOTE"),
                    ],
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads policies from a TOML (`[[policy]]` tables, or one policy at the top
/// level) or JSON (an object or an array) file.
fn read_policies(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // By extension; without one, JSON if it parses as JSON, else TOML.
    let is_json = match file.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        _ => serde_json::from_str::<Value>(&text).is_ok(),
    };
    let value: Value = if is_json {
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?
    } else {
        let t: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: not valid TOML", file.display()))?;
        serde_json::to_value(t)?
    };
    Ok(match value {
        Value::Array(items) => items,
        Value::Object(mut map) => match map.remove("policy") {
            Some(Value::Array(items)) => items,
            Some(other) => bail!(
                "{}: 'policy' must be an array of tables ([[policy]]), got {other}",
                file.display()
            ),
            None => vec![Value::Object(map)],
        },
        _ => bail!(
            "{}: expected a policy object or a list of policies",
            file.display()
        ),
    })
}

fn policy(c: &ApiClient, json: bool, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Import { file } => {
            let policies = read_policies(&file)?;
            let services: Vec<keyward_domain::PasskeyServiceView> = c.get("/passkey-services")?;
            let existing: Vec<keyward_domain::DevicePolicy> = c.get("/policies")?;
            for mut p in policies {
                // A policy file may name its Passkey-Enabled Service instead of giving its id.
                if let Some(fido) = p.get_mut("fido_application").and_then(Value::as_object_mut) {
                    if !fido.contains_key("passkey_service_id") {
                        let name = fido
                            .get("passkey_service_name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let id = services
                            .iter()
                            .find(|s| s.name == name)
                            .map(|s| s.id.to_string())
                            .with_context(|| {
                                format!(
                                    "fido_application: no Passkey-Enabled Service named '{name}'"
                                )
                            })?;
                        fido.insert("passkey_service_id".into(), json!(id));
                    }
                }
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .context("a policy needs a name")?
                    .to_string();
                let exists = existing.iter().any(|e| e.name == name);
                let saved: Value = if exists {
                    c.put(&format!("/policies/{}", enc(&name)), &p)?
                } else {
                    c.post("/policies", &p)?
                };
                if json {
                    print_object(true, &saved);
                } else {
                    println!(
                        "{} policy '{}'",
                        if exists { "replaced" } else { "created" },
                        name
                    );
                }
            }
        }
        PolicyCommand::List => print_list(
            json,
            &c.get("/policies")?,
            &[
                ("name", "NAME"),
                ("device_types", "DEVICE TYPES"),
                ("description", "DESCRIPTION"),
            ],
        ),
        PolicyCommand::Show { name } => {
            print_object(json, &c.get(&format!("/policies/{}", enc(&name)))?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn settings(c: &ApiClient, json: bool, cmd: SettingsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SettingsCommand::Show => print_object(json, &c.get("/settings")?),
        SettingsCommand::Set { key, value } => print_object(
            json,
            &c.put(
                &format!("/settings/{}", enc(&key)),
                &json!({ "value": value }),
            )?,
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn passkey_service(
    c: &ApiClient,
    json: bool,
    cmd: PasskeyServiceCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        PasskeyServiceCommand::Add {
            name,
            tenant_id,
            client_id,
            client_secret_stdin: _,
            client_certificate,
            client_private_key,
            authority_url,
            graph_url,
            scope,
        } => {
            if let (Some(cert), Some(key)) = (client_certificate, client_private_key) {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                };
                let v = c.post(
                    "/passkey-services",
                    &json!({
                        "name": name, "tenant_id": tenant_id, "client_id": client_id,
                        "client_certificate_pem": read(&cert)?,
                        "client_private_key_pem": read(&key)?,
                        "authority_url": authority_url, "graph_url": graph_url, "scope": scope,
                    }),
                )?;
                print_object(json, &v);
                return Ok(ExitCode::SUCCESS);
            }
            let mut secret = String::new();
            std::io::stdin()
                .read_to_string(&mut secret)
                .context("reading the client secret from stdin")?;
            let secret = secret.trim_end_matches(['\r', '\n']).to_string();
            if secret.is_empty() {
                bail!("--client-secret-stdin: standard input was empty");
            }
            let v = c.post(
                "/passkey-services",
                &json!({
                    "name": name, "tenant_id": tenant_id, "client_id": client_id, "client_secret": secret,
                    "authority_url": authority_url, "graph_url": graph_url, "scope": scope,
                }),
            )?;
            print_object(json, &v);
        }
        PasskeyServiceCommand::List => print_list(
            json,
            &c.get("/passkey-services")?,
            &[
                ("name", "NAME"),
                ("tenant_id", "TENANT"),
                ("client_id", "CLIENT"),
                ("authority_url", "AUTHORITY"),
                ("graph_url", "GRAPH"),
            ],
        ),
        PasskeyServiceCommand::Test { name, user } => {
            let v = c.post(
                &format!("/passkey-services/{}/test", enc(&name)),
                &json!({ "user": user }),
            )?;
            let v: PasskeyServiceTestReport = v;
            print_object(json, &serde_json::to_value(&v)?);
            if v.verdict != "ok" {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token(c: &ApiClient, json: bool, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { role, name, days } => {
            let v: TokenCreated = c.post(
                "/tokens",
                &json!({ "name": name, "role": role, "days": days }),
            )?;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                println!("{}", v.token);
                eprintln!("(token '{}' with role {}: shown once)", name, role);
            }
        }
        TokenCommand::List => print_list(
            json,
            &c.get("/tokens")?,
            &[
                ("id", "ID"),
                ("name", "NAME"),
                ("role", "ROLE"),
                ("created_at", "CREATED"),
                ("expires_at", "EXPIRES"),
                ("last_used_at", "LAST USED"),
                ("revoked", "REVOKED"),
            ],
        ),
        TokenCommand::Revoke { id } => {
            c.call::<Value, ()>(
                reqwest::Method::DELETE,
                &format!("/tokens/{}", enc(&id)),
                Body::None,
            )??;
            if !json {
                println!("revoked {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every record through the API, then each checkpoint against the hash
/// chain recomputed from them, with the public key alone.
fn verify_checkpoints(
    c: &ApiClient,
    json: bool,
    file: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use keyward_server::audit_checkpoints as cp;
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let checkpoints =
        cp::read_checkpoints(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let public =
        std::fs::read_to_string(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let mut records: Vec<keyward_domain::AuditEvent> = Vec::new();
    loop {
        let after = records.last().map(|r| r.seq).unwrap_or(0);
        let page: Value = c.get(&format!("/audit?after={after}&limit=1000"))?;
        let items: Vec<keyward_domain::AuditEvent> = serde_json::from_value(page["items"].clone())?;
        if items.is_empty() {
            break;
        }
        records.extend(items);
    }
    let v = cp::verify(&records, &checkpoints, &public);
    let ok = v.problems.is_empty() && !checkpoints.is_empty();
    if json {
        print_object(
            true,
            &json!({ "ok": ok, "records": records.len(), "checkpoints_verified": v.good, "problems": v.problems }),
        );
    } else if ok {
        println!(
            "{} checkpoint(s) verified: no record up to {} changed ({} record(s) now)",
            v.good.len(),
            v.good.iter().max().copied().unwrap_or(0),
            records.len()
        );
    } else {
        if checkpoints.is_empty() {
            println!("no checkpoint in {}", file.display());
        }
        for p in &v.problems {
            println!("  {p}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn audit(c: &ApiClient, json: bool, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            checkpoints: Some(file),
            public_key: Some(key),
        } => verify_checkpoints(c, json, &file, &key),
        AuditCommand::Verify { .. } => {
            let v: AuditVerifyReport = c.get("/audit/verify")?;
            if json {
                print_object(true, &serde_json::to_value(&v)?);
            } else if v.ok {
                println!("audit trail intact: {} record(s)", v.records);
            } else {
                println!("audit trail BROKEN ({} record(s) read):", v.records);
                for p in &v.problems {
                    println!("  {p}");
                }
            }
            Ok(if v.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::List { after, limit } => {
            let mut q = format!("/audit?limit={limit}");
            if let Some(a) = after {
                q.push_str(&format!("&after={a}"));
            }
            print_list(
                json,
                &c.get(&q)?,
                &[
                    ("seq", "SEQ"),
                    ("at", "AT"),
                    ("actor", "ACTOR"),
                    ("action", "ACTION"),
                    ("target", "TARGET"),
                    ("outcome", "OUTCOME"),
                ],
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
