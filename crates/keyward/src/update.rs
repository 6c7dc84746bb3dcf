//! `keyward update`: carries out a connected device's pending update
//! request (`POST /devices/{serial}/update`), relaying the update session
//! like `keyward issue`: certificates added, renewed or removed, the PIN
//! changed when the policy's rules ask it (answers `pin` for the current
//! PIN, `new_pin`), a passkey registered (`fido_pin`, `touch`).
//!
//! Exit codes: 0 updated; 1 other errors; 3 refused before the device was
//! touched (no pending request, not issued, busy, nothing left to update,
//! the management key not known for sure); 4 the update failed (the
//! request stays pending: run it again); 5 declined by the person.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::api::ApiClient;
use crate::relaying::{credentials_json, error_line, failure_exit, read_answers, Answers};

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// Keyward server URL.
    #[arg(long, env = "KEYWARD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token of an operator allowed to update devices.
    #[arg(
        long,
        env = "KEYWARD_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// The device's serial number (decimal).
    #[arg(long)]
    pub serial: String,
    /// The PC/SC reader holding the device (default: the one with this serial).
    #[arg(long)]
    pub reader: Option<String>,
    /// A virtual device's HID socket (`keyward vcard --hid-socket`), where
    /// a USB YubiKey's FIDO application answers CTAPHID (repeatable).
    #[arg(long = "hid-socket", value_name = "PATH")]
    pub hid_sockets: Vec<PathBuf>,
    /// Answers to the prompts (TOML or JSON): `pin` and `new_pin` (a PIN
    /// change), `fido_pin` or `fido_current_pin` and `touch` (a passkey).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// One JSON object on stdout instead of progress text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: UpdateArgs) -> anyhow::Result<ExitCode> {
    let total = Instant::now();
    let client = ApiClient::with_token(&args.server, &args.token, Duration::from_secs(120))?;
    let answers = Answers::new(read_answers(&args.answers)?);
    let target = crate::follow_up::Target {
        server: &args.server,
        serial: &args.serial,
        reader: args.reader.as_deref(),
        hid_sockets: &args.hid_sockets,
        json: args.json,
        verb: "updating",
    };
    let ran = crate::follow_up::run(&client, &target, &answers, |serial, request| {
        client.update(serial, request)
    })?;
    let ran = match ran {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let session = client.session(&ran.id)??;
    let updated = session.status == keyward_domain::SessionStatus::Updated;
    if args.json {
        let report = json!({
            "session_id": ran.id,
            "serial": ran.serial,
            "state": session.status,
            "error": session.error,
            "notice": session.notice,
            "credentials": credentials_json(&session),
            "counters": ran.counters.json(total),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if updated {
        eprintln!(
            "updated: device {} has what its policy gives it ({} new credentials)",
            ran.serial,
            session.credentials.len()
        );
    } else {
        eprintln!(
            "update failed at {} (the request stays pending: run it again)",
            error_line(session.error.as_ref())
        );
    }
    Ok(if updated {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure_exit(session.error.as_ref()))
    })
}
