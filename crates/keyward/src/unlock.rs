//! `keyward unlock`: resets a connected device's blocked (or forgotten) PIV
//! PIN with the PUK the server keeps (`POST /devices/{serial}/unlock`),
//! relaying the unlock session like `keyward issue` and answering its
//! `set_new_pin` prompt (answers key `new_pin`, checked against the
//! policy's PIN rules by the server). The server replaces the PUK in the
//! same batch.
//!
//! A FIDO application with its own PIN: a PIN that needs the device
//! reinserted is said (`notice`); a blocked one is reset when the person
//! confirms (`reinsert_device`, `touch`), and the policy's passkey is
//! registered again (`fido_pin`).
//!
//! Exit codes: 0 unlocked; 1 other errors; 3 refused before the device was
//! touched (not issued, no PUK held, PUK blocked, busy); 4 the unlock
//! failed (the report says why: a wrong or blocked PUK, the device left).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct UnlockArgs {
    /// Keyward server URL.
    #[arg(long, env = "KEYWARD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token of an operator allowed to unlock devices (help desk).
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
    /// Answers to the prompts (TOML or JSON): `new_pin`; a blocked FIDO
    /// PIN's reset: `touch` (true confirms the reset and the new passkey's
    /// registration) and `fido_pin` (the new FIDO PIN).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// A virtual device's HID socket (`keyward vcard --hid-socket`), where
    /// a USB YubiKey's FIDO application answers CTAPHID (repeatable;
    /// hidraw devices are found without it).
    #[arg(long = "hid-socket", value_name = "PATH")]
    pub hid_sockets: Vec<PathBuf>,
    /// One JSON object on stdout instead of progress text (offline: the
    /// challenge first, then the outcome, one object per line).
    #[arg(long)]
    pub json: bool,
    /// Offline unlock, without the server: a C4000's challenge-response or
    /// a YubiKey's PUK, both read to you by the help desk (standard input).
    #[arg(long)]
    pub offline: bool,
}

pub fn run(args: UnlockArgs) -> anyhow::Result<ExitCode> {
    if args.offline {
        return crate::offline_unlock::run(&args);
    }
    let cmd = crate::follow_up::Command {
        server: &args.server,
        token: &args.token,
        serial: &args.serial,
        reader: args.reader.as_deref(),
        hid_sockets: &args.hid_sockets,
        answers: &args.answers,
        json: args.json,
        verb: "unlocking",
        done: keyward_domain::SessionStatus::Unlocked,
    };
    crate::follow_up::run_and_report(
        &cmd,
        |client, serial, request| client.unlock(serial, request),
        |_| {
            format!(
                "unlocked: device {} has its new PIN (and a new PUK Keyward keeps)",
                args.serial
            )
        },
        "unlock failed",
    )
}
