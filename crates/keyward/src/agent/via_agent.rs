//! `keyward issue` for a device that is not connected here but reported by a
//! paired workstation agent: the server delivers the command batches to
//! that agent; this client follows the session (progress on stderr),
//! answers its prompts from `--answers` (or the PIN just shown), and reports
//! the end as a local issuance does.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::anyhow;
use keyward_proto::agent::AgentDeviceView;
use keyward_proto::{SessionView, StartIssuance};
use serde_json::json;

use crate::api::ApiClient;
use crate::relaying::{credentials_json, error_line, follow, Answers, EXIT_DECLINED, EXIT_FAILED};

/// The device with this serial that an online agent the token may use
/// reports (none when the token may not list agents' devices).
pub fn agent_device(client: &ApiClient, serial: &str) -> anyhow::Result<Option<AgentDeviceView>> {
    Ok(client
        .agent_devices()?
        .map(|v| v.devices)
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.agent_online && d.device.serial == serial))
}

/// Starts the issuance through the agent (`start.via`) and follows it to
/// the end.
pub fn issue(
    client: &ApiClient,
    start: &StartIssuance,
    answers: Answers,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let first = match client.start_issuance(start)? {
        Ok(batch) => batch,
        Err(e) => return crate::issue::refused(e, &start.serial, json_out),
    };
    let session = follow(client, &first.session_id, &answers, json_out)?;
    report(&session, json_out, total)
}

/// `keyward issue --retry` of a session bound to an agent: the retry is
/// relayed by that agent again; this client follows it and answers prompts.
pub fn retry(
    client: &ApiClient,
    id: &str,
    serial: &str,
    answers: Answers,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    client
        .retry(id)?
        .map_err(|e| anyhow!("retry refused: {e}"))?;
    if !json_out {
        eprintln!("retrying session {id} on device {serial} through its agent");
    }
    let session = follow(client, id, &answers, json_out)?;
    report(&session, json_out, total)
}

/// Reports a session an agent relayed, and the exit code.
fn report(session: &SessionView, json_out: bool, total: Instant) -> anyhow::Result<ExitCode> {
    let id = &session.session_id;
    let credentials = credentials_json(session);
    let issued = session.status == keyward_domain::SessionStatus::Issued;
    if json_out {
        let report = json!({
            "session_id": id,
            "serial": session.serial,
            "state": session.status,
            "via": "agent",
            "credentials": credentials,
            "error": session.error,
            "counters": {
                "round_trips": session.seq - 1,
                "total_ms": (total.elapsed().as_secs_f64() * 1e3).round(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if issued {
        eprintln!(
            "issued through the agent: device {}, {} credential(s)",
            session.serial,
            credentials.len()
        );
    } else {
        eprintln!(
            "issuance {} at {}\nsession {id}: retry with `keyward issue --retry {id}` or cancel with `keyward issue --cancel {id}`",
            session.status,
            error_line(session.error.as_ref()),
        );
    }
    let declined = session
        .error
        .as_ref()
        .is_some_and(|e| e.code == "declined_by_person");
    Ok(match session.status {
        keyward_domain::SessionStatus::Issued => ExitCode::SUCCESS,
        _ if declined => ExitCode::from(EXIT_DECLINED),
        keyward_domain::SessionStatus::Cancelled => ExitCode::from(EXIT_DECLINED),
        _ => ExitCode::from(EXIT_FAILED),
    })
}
