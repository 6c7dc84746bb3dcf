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
    Counters, IssueArgs, Relay, EXIT_REFUSED,
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
    let local = choose_reader(&IssueArgs {
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
    });
    // Not connected here: a device a paired workstation agent reports is
    // recycled through that agent (this client answers the prompts).
    let (reader, serial, body) = match local {
        Ok((reader, serial)) => (Some(reader), serial, json!({})),
        Err(local) => {
            let Some(d) = crate::agent::via_agent::agent_devices(&args.server, &args.token)?
                .into_iter()
                .find(|d| d.serial == args.serial)
            else {
                return Err(local);
            };
            (None, d.serial, json!({ "via": d.agent_id }))
        }
    };
    let (status, batch) = relay.post(&format!("/devices/{serial}/recycle"), &body)?;
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
    let (id, counters) = match &reader {
        Some(reader) => {
            if !args.json {
                eprintln!("recycling device {serial} in \"{reader}\"");
            }
            // A FIDO reset of a USB YubiKey goes over CTAPHID; others over ISO 7816.
            let fido = fido_hid(&serial, &args.hid_sockets);
            drive_with_fido(&relay, reader, fido, batch, &answers, args.json)?
        }
        None => {
            if !args.json {
                eprintln!("recycling device {serial} through its workstation agent");
            }
            follow(&relay, &batch, &answers, args.json)?
        }
    };
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

/// Follows a recycle relayed by a workstation agent: progress, the prompts
/// (answered here), the end.
fn follow(
    relay: &Relay,
    first: &serde_json::Value,
    answers: &Answers,
    json_out: bool,
) -> anyhow::Result<(String, Counters)> {
    let id = first["session_id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    let mut answered = None;
    let mut last_step = String::new();
    loop {
        let s = relay.get(&format!("/issuance/{id}"))?;
        let step = s["step"].as_str().unwrap_or_default().to_string();
        if !json_out && step != last_step {
            eprintln!("  {step}");
            last_step = step;
        }
        if s["status"] != "running" {
            return Ok((id, Counters::default()));
        }
        let prompts = s["prompts"].as_array().cloned().unwrap_or_default();
        if !prompts.is_empty() && answered != s["seq"].as_i64() {
            let given = answers.answer(&prompts)?;
            let result = json!({ "protocol": 1, "session_id": id, "seq": s["seq"], "responses": [], "answers": given });
            let (status, v) = relay.post(&format!("/issuance/{id}/relay"), &result)?;
            if status != 200 {
                bail!("the server refused the answers: {}", server_error(&v));
            }
            answered = s["seq"].as_i64();
        }
        if Instant::now() > deadline {
            bail!("session {id} did not end within 10 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
