//! A follow-up session of an issued or known device (`keyward recycle`,
//! `keyward unlock`): started by the server for the serial, relayed here
//! when the device is in a local reader, else through the paired
//! workstation agent that reports it (this client then answers the
//! prompts). The common part of both commands.

use std::path::PathBuf;
use std::process::ExitCode;

use keyward_proto::{RecycleRequest, RelayBatch};

use crate::api::{Answer, ApiClient};
use crate::issue::{choose_reader, fido_hid, IssueArgs};
use crate::relaying::{drive, follow, Answers, Counters};

/// Where the device is and how to report.
pub struct Target<'a> {
    pub server: &'a str,
    pub serial: &'a str,
    pub reader: Option<&'a str>,
    pub hid_sockets: &'a [PathBuf],
    pub json: bool,
    /// "recycling", "unlocking": the progress line's verb.
    pub verb: &'a str,
}

/// The session that ran: its id, the device's serial, the counters.
pub struct Ran {
    pub id: String,
    pub serial: String,
    pub counters: Counters,
}

/// Starts the session with `start(serial, request)` and relays it to its
/// end. `Err(code)`: refused before the device was touched (reported).
pub fn run(
    client: &ApiClient,
    target: &Target<'_>,
    answers: &Answers,
    start: impl FnOnce(&str, &RecycleRequest) -> Answer<RelayBatch>,
) -> anyhow::Result<Result<Ran, ExitCode>> {
    let local = choose_reader(&IssueArgs {
        server: target.server.to_string(),
        token: String::new(),
        user: None,
        policy: None,
        replaces: None,
        request: None,
        reason: None,
        cancel: None,
        retry: None,
        serial: Some(target.serial.to_string()),
        reader: target.reader.map(str::to_string),
        action: "issue".into(),
        answers: None,
        json: target.json,
        hid_sockets: Vec::new(),
    });
    // Not connected here: a device a paired workstation agent reports goes
    // through that agent.
    let (reader, serial, request) = match local {
        Ok((reader, serial)) => (Some(reader), serial, RecycleRequest::default()),
        Err(local) => {
            let Some(d) = crate::agent::via_agent::agent_device(client, target.serial)? else {
                return Err(local);
            };
            let via = Some(d.agent_id);
            (None, d.device.serial, RecycleRequest { via })
        }
    };
    let batch = match start(&serial, &request)? {
        Ok(batch) => batch,
        Err(e) => return crate::issue::refused(e, &serial, target.json).map(Err),
    };
    let (id, counters) = match &reader {
        Some(reader) => {
            if !target.json {
                eprintln!("{} device {serial} in \"{reader}\"", target.verb);
            }
            // FIDO of a USB YubiKey goes over CTAPHID; others over ISO 7816.
            let fido = fido_hid(&serial, target.hid_sockets);
            drive(client, reader, fido, batch, answers, target.json)?
        }
        None => {
            if !target.json {
                eprintln!(
                    "{} device {serial} through its workstation agent",
                    target.verb
                );
            }
            let id = batch.session_id;
            follow(client, &id, answers, target.json)?;
            (id, Counters::default())
        }
    };
    Ok(Ok(Ran {
        id,
        serial,
        counters,
    }))
}

/// The common part of `keyward unlock` and `keyward update`: where the
/// device is and how to report.
pub struct Command<'a> {
    pub server: &'a str,
    pub token: &'a str,
    pub serial: &'a str,
    pub reader: Option<&'a str>,
    pub hid_sockets: &'a [PathBuf],
    pub answers: &'a Option<PathBuf>,
    pub json: bool,
    /// "unlocking", "updating".
    pub verb: &'a str,
    /// The session status that means success.
    pub done: keyward_domain::SessionStatus,
}

/// Starts the follow-up session with `start`, relays it to its end and
/// reports it (`--json`: session_id, serial, state, error, notice,
/// credentials, counters; else `ok` or `failed` with the error line, and
/// the notice). Answers the exit code.
pub fn run_and_report(
    cmd: &Command<'_>,
    start: impl FnOnce(&ApiClient, &str, &RecycleRequest) -> Answer<RelayBatch>,
    ok: impl FnOnce(&keyward_proto::SessionView) -> String,
    failed: &str,
) -> anyhow::Result<ExitCode> {
    use crate::relaying::{credentials_json, error_line, failure_exit, read_answers};
    let total = std::time::Instant::now();
    let client = ApiClient::with_token(cmd.server, cmd.token, std::time::Duration::from_secs(120))?;
    let answers = Answers::new(read_answers(cmd.answers)?);
    let target = Target {
        server: cmd.server,
        serial: cmd.serial,
        reader: cmd.reader,
        hid_sockets: cmd.hid_sockets,
        json: cmd.json,
        verb: cmd.verb,
    };
    let ran = match run(&client, &target, &answers, |serial, request| {
        start(&client, serial, request)
    })? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let session = client.session(&ran.id)??;
    let succeeded = session.status == cmd.done;
    if cmd.json {
        let report = serde_json::json!({
            "session_id": ran.id,
            "serial": ran.serial,
            "state": session.status,
            "error": session.error,
            "notice": session.notice,
            "credentials": credentials_json(&session),
            "counters": ran.counters.json(total),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if succeeded {
        eprintln!("{}", ok(&session));
        if let Some(n) = &session.notice {
            eprintln!("{}", n.message);
        }
    } else {
        eprintln!("{failed} at {}", error_line(session.error.as_ref()));
    }
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure_exit(session.error.as_ref()))
    })
}
