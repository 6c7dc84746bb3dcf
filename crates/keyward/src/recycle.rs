//! `keyward recycle`: returns a connected device to factory state through
//! the server (`POST /devices/{serial}/recycle`), relaying the recycle
//! session's batches like `keyward issue` and answering its prompts
//! (`reinsert_device`, `confirm_touch` when the FIDO application is reset).
//!
//! Exit codes: 0 the device is `available`; 1 other errors; 3 refused
//! before the device was touched (not recyclable, unknown, busy); 4 the
//! recycle failed (run it again); 5 the person declined the touch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::api::ApiClient;
use crate::relaying::{error_line, failure_exit, read_answers, Answers};

#[derive(Args, Debug, Clone)]
pub struct RecycleArgs {
    /// Keyward server URL.
    #[arg(long, env = "KEYWARD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token of an operator allowed to recycle devices.
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
    /// Answers to the prompts (TOML or JSON): `touch` (`true` or `false`).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// One JSON object on stdout instead of progress text.
    #[arg(long)]
    pub json: bool,
    /// A virtual device's HID socket, where a USB YubiKey's FIDO application
    /// answers CTAPHID for the FIDO reset (repeatable; hidraw is searched too).
    #[arg(long = "hid-socket", value_name = "PATH")]
    pub hid_sockets: Vec<PathBuf>,
}

pub fn run(args: RecycleArgs) -> anyhow::Result<ExitCode> {
    let total = Instant::now();
    let client = ApiClient::with_token(&args.server, &args.token, Duration::from_secs(120))?;
    let answers = Answers::new(read_answers(&args.answers)?);
    let target = crate::follow_up::Target {
        server: &args.server,
        serial: &args.serial,
        reader: args.reader.as_deref(),
        hid_sockets: &args.hid_sockets,
        json: args.json,
        verb: "recycling",
    };
    let ran = crate::follow_up::run(&client, &target, &answers, |serial, request| {
        client.recycle(serial, request)
    })?;
    let (id, serial, counters) = match ran {
        Ok(r) => (r.id, r.serial, r.counters),
        Err(code) => return Ok(code),
    };
    let session = client.session(&id)??;
    let device = client.device(&serial)??;
    let recycled = session.status == keyward_domain::SessionStatus::Recycled
        && device.device.state == keyward_domain::DeviceState::Available;
    if args.json {
        let report = json!({
            "session_id": id,
            "serial": serial,
            "state": device.device.state,
            "reason": device.device.reason,
            "session_state": session.status,
            "error": session.error,
            "counters": counters.json(total),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if recycled {
        eprintln!("recycled: device {serial} is available");
    } else {
        eprintln!(
            "recycle failed at {}; the device can be recycled again",
            error_line(session.error.as_ref())
        );
    }
    Ok(if recycled {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure_exit(session.error.as_ref()))
    })
}
