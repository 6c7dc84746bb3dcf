//! `keyward issue`: the headless client of an issuance. It chooses the
//! device, asks the server to start the session, then only relays: it runs
//! each batch of device commands on the device, stops at the first status
//! word the server did not expect, and returns the responses. All card logic
//! is on the server; secret commands are never printed or stored here.
//!
//! Prompts (a batch with no device command) are answered from `--answers`
//! (TOML or JSON: `pin`, `confirm_pin`, `new_pin`, `fido_pin`,
//! `fido_current_pin`, `touch`) or, on a terminal, by asking the person (PINs
//! without echo); a prompt with no answer and no terminal fails naming the
//! answers key.
//!
//! Exit codes: 0 issued (or assigned with `--action assign`); 1 other errors (server unreachable, 401, no or
//! ambiguous device, a prompt with no answer); 2 usage; 3 refused before the device was touched;
//! 4 failed during issuance (`--retry SESSION_ID` retries it, `--cancel SESSION_ID`
//! cancels it); 5 cancelled by the person (declined the touch: `declined_by_person`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;
use keyward_proto::StartIssuance;
use keyward_transport::discover::{discover, DiscoveryOptions};
use serde_json::json;

use crate::api::ApiClient;
use crate::relaying::{
    credentials_json, drive, error_line, failure_exit, read_answers, Answers, EXIT_REFUSED,
};

#[derive(Args, Debug, Clone)]
pub struct IssueArgs {
    /// Keyward server URL.
    #[arg(long, env = "KEYWARD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token of an issuance operator.
    #[arg(
        long,
        env = "KEYWARD_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// The user's login.
    #[arg(long, required_unless_present_any = ["cancel", "retry"])]
    pub user: Option<String>,
    /// The device policy's name (with `--replaces`: the replaced device's
    /// policy unless given).
    #[arg(long, required_unless_present_any = ["cancel", "retry", "replaces"])]
    pub policy: Option<String>,
    /// Replace Device: the serial of the user's device this one replaces.
    /// Lost, stolen, damaged or expired: permanent (the incident is
    /// declared on the old device now, and it is terminated when this one
    /// is issued); forgotten: temporary (this device lasts the policy's
    /// temporary_validity_days, or until the original is found).
    #[arg(long, value_name = "OLD_SERIAL", requires = "reason", conflicts_with_all = ["cancel", "retry"])]
    pub replaces: Option<String>,
    /// The approved request this issuance carries out (a policy that
    /// requires a second operator's approval).
    #[arg(long, value_name = "ID", conflicts_with_all = ["cancel", "retry"])]
    pub request: Option<uuid::Uuid>,
    /// Why the old device is replaced: lost, stolen, damaged, expired or forgotten.
    #[arg(long, requires = "replaces", value_parser = ["lost", "stolen", "damaged", "expired", "forgotten"])]
    pub reason: Option<String>,
    /// Cancel a failed session instead: the device is no longer assigned to the user.
    #[arg(long, value_name = "SESSION_ID", conflicts_with_all = ["user", "policy", "serial", "reader", "answers"])]
    pub cancel: Option<String>,
    /// Retry a failed session: the same device (leave it in the reader),
    /// policy and PIN.
    #[arg(long, value_name = "SESSION_ID", conflicts_with_all = ["user", "policy", "serial", "reader", "cancel"])]
    pub retry: Option<String>,
    /// The device's serial number (decimal).
    #[arg(long, conflicts_with = "reader")]
    pub serial: Option<String>,
    /// The PC/SC reader holding the device.
    #[arg(long)]
    pub reader: Option<String>,
    /// "Action Type": `issue` (default) or `assign` (bind the device to the
    /// user with the policy; issuance completes later). `assign` needs
    /// `--serial` and does not touch the device.
    #[arg(long, default_value = "issue", value_parser = ["issue", "assign"])]
    pub action: String,
    /// Answers to the prompts (TOML or JSON): `pin`, `confirm_pin`, …
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// One JSON object on stdout instead of progress text.
    #[arg(long)]
    pub json: bool,
    /// A virtual device's HID socket (`keyward vcard --hid-socket`), where
    /// a USB YubiKey's FIDO application answers CTAPHID (repeatable;
    /// hidraw devices are found without it).
    #[arg(long = "hid-socket", value_name = "PATH")]
    pub hid_sockets: Vec<PathBuf>,
}

/// The reader of the device to issue: by serial, by reader name, or the only
/// supported device connected.
pub(crate) fn choose_reader(args: &IssueArgs) -> anyhow::Result<(String, String)> {
    let found = discover(&DiscoveryOptions {
        hidraw: false,
        ..Default::default()
    });
    let candidates: Vec<_> = found
        .devices
        .iter()
        .filter(|d| d.identity.supported && d.reader.is_some())
        .map(|d| {
            (
                d.reader.clone().unwrap_or_default(),
                d.identity.serial.map(|s| s.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    let list = || {
        candidates
            .iter()
            .map(|(r, s)| format!("  {s} in \"{r}\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let chosen: Vec<_> = candidates
        .iter()
        .filter(|(r, s)| {
            args.serial.as_ref().is_none_or(|want| want == s)
                && args.reader.as_ref().is_none_or(|want| want == r)
        })
        .cloned()
        .collect();
    match chosen.len() {
        1 => Ok(chosen.into_iter().next().expect("one")),
        0 if candidates.is_empty() => bail!("no supported device is connected"),
        0 => bail!("no connected device matches; connected:\n{}", list()),
        _ => bail!(
            "several devices are connected: choose one with --serial or --reader:\n{}",
            list()
        ),
    }
}

/// How the device `serial` in a local reader identifies itself.
fn local_identity(serial: &str) -> Option<keyward_transport::identify::Identity> {
    discover(&DiscoveryOptions {
        hidraw: false,
        ..Default::default()
    })
    .devices
    .into_iter()
    .find(|d| {
        d.identity.supported && d.identity.serial.map(|s| s.to_string()).as_deref() == Some(serial)
    })
    .map(|d| d.identity)
}

/// The device's FIDO application over CTAPHID (a USB YubiKey: no FIDO over
/// CCID), found by serial on hidraw and the given HID sockets. None: CTAP
/// messages go over ISO 7816 in the reader (a C4000, a YubiKey over NFC).
pub(crate) fn fido_hid(
    serial: &str,
    sockets: &[PathBuf],
) -> Option<Box<dyn keyward_transport::ctap::CtapTransport>> {
    use keyward_transport::ctaphid::{CtaphidDevice, HidReports};
    // With PC/SC too: the HID side may give no serial and is then joined to
    // its card by type and firmware (docs/devices.md). A HID socket named on
    // the command line is expected: a busy probe is tried again.
    let attempts = if sockets.is_empty() { 1 } else { 3 };
    let path = (0..attempts).find_map(|i| {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let found = discover(&DiscoveryOptions {
            hidraw: true,
            hid_sockets: sockets.to_vec(),
            ..Default::default()
        });
        found.devices.into_iter().find_map(|d| {
            (d.identity.serial.map(|s| s.to_string()).as_deref() == Some(serial))
                .then_some(d.hid_path)
                .flatten()
        })
    })?;
    let path = PathBuf::from(path);
    let dev: Box<dyn HidReports> = if sockets.contains(&path) {
        Box::new(keyward_transport::hid::HidSocketDevice::open(&path).ok()?)
    } else {
        Box::new(keyward_transport::hid::HidrawDevice::open(&path).ok()?)
    };
    Some(Box::new(CtaphidDevice::open(dev).ok()?))
}

/// `--cancel SESSION_ID`: ends a failed attempt; the device is no longer
/// assigned to the user.
fn cancel(client: &ApiClient, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v = client
        .cancel(id)?
        .map_err(|e| anyhow!("cancel refused: {e}"))?;
    if json {
        let report = json!({ "session_id": id, "serial": v.serial, "state": v.status });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "cancelled: device {} is no longer assigned to {}",
            v.serial, v.user
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An answer of the API that refuses a start (before the device is
/// touched): exit 3, or an error for a refused token.
pub(crate) fn refused(
    e: crate::api::ApiError,
    serial: &str,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    match e.status {
        401 | 403 => bail!("the server refused the token: {e}"),
        400 | 404 | 409 => {
            if json_out {
                println!(
                    "{}",
                    json!({ "serial": serial, "state": "refused", "error": e.error })
                );
            } else {
                eprintln!("refused before the device was touched: {e}");
            }
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        _ => bail!("the server answered: {e}"),
    }
}

/// The policy and what the device replaces, for the progress line.
fn what(start: &StartIssuance) -> String {
    let policy = match start.policy.as_str() {
        "" => "with the replaced device's policy".to_string(),
        p => format!("with policy \"{p}\""),
    };
    match (&start.replaces, &start.replace_reason) {
        (Some(old), Some(reason)) => format!("{policy}, replacing device {old} ({reason})"),
        _ => policy,
    }
}

/// `--action assign`: binds the device to the user with the policy.
fn assign(client: &ApiClient, args: &IssueArgs, start: StartIssuance) -> anyhow::Result<ExitCode> {
    let serial = args
        .serial
        .clone()
        .ok_or_else(|| anyhow!("--action assign needs --serial"))?;
    let start = StartIssuance {
        serial: serial.clone(),
        action: Some("assign".into()),
        ..start
    };
    match client.assign(&start)? {
        Ok(v) if args.json => println!("{}", serde_json::to_string_pretty(&v)?),
        Ok(v) => eprintln!(
            "assigned: device {} to {} with policy \"{}\"",
            v.serial, v.user, v.policy
        ),
        Err(e) if matches!(e.status, 401 | 403) => {
            bail!("the server refused the token: {e}")
        }
        Err(e) => {
            eprintln!("refused: {e}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let total = Instant::now();
    let client = ApiClient::with_token(&args.server, &args.token, Duration::from_secs(120))?;
    if let Some(id) = &args.cancel {
        return cancel(&client, id, args.json);
    }
    let answers = read_answers(&args.answers)?;
    if let Some(id) = &args.retry {
        let session = client
            .session(id)?
            .map_err(|e| anyhow!("no session {id}: {e}"))?;
        // A session bound to a workstation agent is retried through it: no
        // local reader is needed (or used).
        if session.agent.is_some() {
            return crate::agent::via_agent::retry(
                &client,
                id,
                &session.serial,
                Answers::new(answers),
                args.json,
                total,
            );
        }
        let found = IssueArgs {
            serial: Some(session.serial.clone()),
            ..args.clone()
        };
        let (reader, serial) = choose_reader(&found)?;
        let batch = client
            .retry(id)?
            .map_err(|e| anyhow!("retry refused: {e}"))?;
        if !args.json {
            eprintln!("retrying session {id} on device {serial} in \"{reader}\"");
        }
        let fido = fido_hid(&serial, &args.hid_sockets);
        let (id, counters) = drive(
            &client,
            &reader,
            fido,
            batch,
            &Answers::new(answers),
            args.json,
        )?;
        return report(&client, &id, &serial, counters, args.json, total);
    }
    let text = |k: &str| {
        answers.get(k).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let start = StartIssuance {
        user: args.user.clone().unwrap_or_default(),
        policy: args.policy.clone().unwrap_or_default(),
        serial: String::new(),
        pin: text("pin"),
        confirm_pin: text("confirm_pin"),
        action: None,
        via: None,
        replaces: args.replaces.clone(),
        replace_reason: args.reason.clone(),
        request: args.request,
        identified_type: None,
        identified_firmware: None,
    };
    if args.action == "assign" {
        return assign(&client, &args, start);
    }
    let (reader, serial) = match choose_reader(&args) {
        Ok(found) => found,
        Err(local) => {
            // Not connected here: a device a paired workstation agent reports
            // runs through that agent (this client answers the prompts).
            let reported = match &args.serial {
                Some(s) => crate::agent::via_agent::agent_device(&client, s)?,
                None => None,
            };
            let Some(d) = reported else {
                return Err(local);
            };
            if !args.json {
                eprintln!(
                    "issuing device {} through the agent \"{}\" to {} {}",
                    d.device.serial,
                    d.agent_name,
                    start.user,
                    what(&start)
                );
            }
            let start = StartIssuance {
                serial: d.device.serial.clone(),
                via: Some(d.agent_id.clone()),
                ..start
            };
            return crate::agent::via_agent::issue(
                &client,
                &start,
                Answers::new(answers),
                args.json,
                total,
            );
        }
    };
    if !args.json {
        eprintln!(
            "issuing device {serial} in \"{reader}\" to {} {}",
            start.user,
            what(&start)
        );
    }
    // The device's own identification, for a server that imports devices
    // it does not know ("Enable Automatic Import of Unknown Cards").
    let identity = local_identity(&serial);
    let start = StartIssuance {
        serial: serial.clone(),
        identified_type: identity
            .as_ref()
            .and_then(|i| i.device_type)
            .map(|t| t.as_str().to_string()),
        identified_firmware: identity
            .as_ref()
            .and_then(|i| i.firmware)
            .map(|f| f.to_string()),
        ..start
    };
    let batch = match client.start_issuance(&start)? {
        Ok(batch) => batch,
        Err(e) => return refused(e, &serial, args.json),
    };
    let fido = fido_hid(&serial, &args.hid_sockets);
    let (id, counters) = drive(
        &client,
        &reader,
        fido,
        batch,
        &Answers::new(answers),
        args.json,
    )?;
    report(&client, &id, &serial, counters, args.json, total)
}

/// Reports a session relayed here, and the exit code.
fn report(
    client: &ApiClient,
    id: &str,
    serial: &str,
    counters: crate::relaying::Counters,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let session = client.session(id)??;
    let issued = session.status == keyward_domain::SessionStatus::Issued;
    let credentials = credentials_json(&session);
    if json_out {
        let report = json!({
            "session_id": id,
            "serial": serial,
            "state": session.status,
            "credentials": credentials,
            "error": session.error,
            "counters": counters.json(total),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if issued {
        eprintln!(
            "issued: device {serial}, {} credential(s), {} round trips",
            credentials.len(),
            counters.round_trips
        );
    } else {
        eprintln!(
            "issuance failed at {}\nsession {id}: retry with `keyward issue --retry {id}` (leave the device in the reader) or cancel with `keyward issue --cancel {id}`",
            error_line(session.error.as_ref())
        );
    }
    Ok(if issued {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure_exit(session.error.as_ref()))
    })
}
