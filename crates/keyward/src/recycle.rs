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

use anyhow::bail;
use clap::Args;
use serde_json::json;

use crate::issue::{
    choose_reader, drive_with_fido, failure_exit, fido_hid, read_answers, server_error, Answers,
    IssueArgs, Relay, EXIT_REFUSED,
};

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
    let relay = Relay::new(&args.server, &args.token)?;
    let answers = Answers::new(read_answers(&args.answers)?);
    let (reader, serial) = choose_reader(&IssueArgs {
        server: args.server.clone(),
        token: String::new(),
        user: None,
        policy: None,
        cancel: None,
        retry: None,
        serial: Some(args.serial.clone()),
        reader: args.reader.clone(),
        action: "issue".into(),
        answers: None,
        json: args.json,
        hid_sockets: Vec::new(),
    })?;
    let (status, batch) = relay.post(&format!("/devices/{serial}/recycle"), &json!({}))?;
    match status {
        201 => {}
        401 | 403 => bail!("the server refused the token: {}", server_error(&batch)),
        400 | 404 | 409 => {
            if args.json {
                println!(
                    "{}",
                    json!({ "serial": serial, "state": "refused", "error": batch["error"] })
                );
            } else {
                eprintln!(
                    "refused before the device was touched: {}",
                    server_error(&batch)
                );
            }
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
        _ => bail!(
            "the server answered HTTP {status}: {}",
            server_error(&batch)
        ),
    }
    if !args.json {
        eprintln!("recycling device {serial} in \"{reader}\"");
    }
    // A FIDO reset of a USB YubiKey goes over CTAPHID; others over ISO 7816.
    let fido = fido_hid(&serial, &args.hid_sockets);
    let (id, counters) = drive_with_fido(&relay, &reader, fido, batch, &answers, args.json)?;
    let session = relay.get(&format!("/issuance/{id}"))?;
    let device = relay.get(&format!("/devices/{serial}"))?;
    let state = device["state"].as_str().unwrap_or("unknown").to_string();
    let recycled = session["status"] == "recycled" && state == "available";
    let report = json!({
        "session_id": id,
        "serial": serial,
        "state": state,
        "reason": device["reason"],
        "session_state": session["status"],
        "error": session["error"],
        "counters": counters.json(total),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if recycled {
        eprintln!("recycled: device {serial} is available");
    } else {
        let e = &session["error"];
        eprintln!(
            "recycle failed at '{}': {} [{}]; the device can be recycled again",
            e["step"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
            e["code"].as_str().unwrap_or("")
        );
    }
    Ok(if recycled {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure_exit(&session["error"]))
    })
}
