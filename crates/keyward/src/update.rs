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

use clap::Args;

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
    let cmd = crate::follow_up::Command {
        server: &args.server,
        token: &args.token,
        serial: &args.serial,
        reader: args.reader.as_deref(),
        hid_sockets: &args.hid_sockets,
        answers: &args.answers,
        json: args.json,
        verb: "updating",
        done: keyward_domain::SessionStatus::Updated,
    };
    crate::follow_up::run_and_report(
        &cmd,
        |client, serial, request| client.update(serial, request),
        |session| {
            format!(
                "updated: device {} has what its policy gives it ({} new credentials)",
                args.serial,
                session.credentials.len()
            )
        },
        "update failed (the request stays pending: run it again)",
    )
}
