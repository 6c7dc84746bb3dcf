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
use keyward_proto::RecycleRequest;
use serde_json::json;

use crate::api::ApiClient;
use crate::issue::{choose_reader, fido_hid, IssueArgs};
use crate::relaying::{drive, error_line, failure_exit, follow, read_answers, Answers, Counters};

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
    let local = choose_reader(&IssueArgs {
        server: args.server.clone(),
        token: String::new(),
        user: None,
        policy: None,
        replaces: None,
        reason: None,
        cancel: None,
        retry: None,
        serial: Some(args.serial.clone()),
        reader: args.reader.clone(),
        action: "issue".into(),
        answers: None,
        json: args.json,
        hid_sockets: Vec::new(),
    });
    // Not connected here: a device a paired workstation agent reports is
    // recycled through that agent (this client answers the prompts).
    let (reader, serial, request) = match local {
        Ok((reader, serial)) => (Some(reader), serial, RecycleRequest::default()),
        Err(local) => {
            let Some(d) = crate::agent::via_agent::agent_device(&client, &args.serial)? else {
                return Err(local);
            };
            let via = Some(d.agent_id);
            (None, d.device.serial, RecycleRequest { via })
        }
    };
    let batch = match client.recycle(&serial, &request)? {
        Ok(batch) => batch,
        Err(e) => return crate::issue::refused(e, &serial, args.json),
    };
    let (id, counters) = match &reader {
        Some(reader) => {
            if !args.json {
                eprintln!("recycling device {serial} in \"{reader}\"");
            }
            // A FIDO reset of a USB YubiKey goes over CTAPHID; others over ISO 7816.
            let fido = fido_hid(&serial, &args.hid_sockets);
            drive(&client, reader, fido, batch, &answers, args.json)?
        }
        None => {
            if !args.json {
                eprintln!("recycling device {serial} through its workstation agent");
            }
            let id = batch.session_id;
            follow(&client, &id, &answers, args.json)?;
            (id, Counters::default())
        }
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
