//! `keyward issue` for a device that is not connected here but reported by a
//! paired workstation agent: the server delivers the command batches to
//! that agent; this client follows the session (progress on stderr),
//! answers its prompts from `--answers` (or the PIN just shown), and reports
//! the end as a local issuance does.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// A device an agent reports, as `GET /agents/devices` lists it.
#[derive(Debug, Clone)]
pub struct AgentDevice {
    pub serial: String,
    #[allow(dead_code)]
    pub device_type: String,
    pub agent_id: String,
    pub agent_name: String,
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The devices the online agents the token may use report.
pub fn agent_devices(server: &str, token: &str) -> anyhow::Result<Vec<AgentDevice>> {
    let base = server.trim_end_matches('/');
    let r = client()?
        .get(format!("{base}/api/v1/agents/devices"))
        .bearer_auth(token)
        .send()
        .with_context(|| format!("cannot reach the Keyward server at {base}"))?;
    if !r.status().is_success() {
        return Ok(vec![]);
    }
    let v: Value = r.json()?;
    Ok(v["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["agent_online"] == true)
        .map(|d| AgentDevice {
            serial: d["serial"].as_str().unwrap_or_default().into(),
            device_type: d["device_type"].as_str().unwrap_or_default().into(),
            agent_id: d["agent_id"].as_str().unwrap_or_default().into(),
            agent_name: d["agent_name"].as_str().unwrap_or_default().into(),
        })
        .collect())
}

/// The answer key of a prompt kind (docs/protocol.md, Prompts).
fn answer_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "enter_pin" => "pin",
        "confirm_pin" => "confirm_pin",
        "set_new_pin" => "new_pin",
        "set_fido_pin" => "fido_pin",
        "enter_fido_pin" => "fido_current_pin",
        "confirm_touch" => "touch",
        _ => return None,
    })
}

/// The answers to a prompt batch, or the prompt no answer was given for.
pub fn answers_for(
    prompts: &[Value],
    given: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = BTreeMap::new();
    for p in prompts {
        let kind = p["kind"].as_str().unwrap_or_default();
        let value = match kind {
            // Typed back: the PIN just shown to the person.
            "show_initial_pin" => p["value"].as_str().map(str::to_string),
            "reinsert_device" => Some("done".to_string()),
            "confirm_pin" => given
                .get("confirm_pin")
                .or_else(|| given.get("pin"))
                .map(text),
            // Shown while the device works; nothing to answer.
            "touch_device" => continue,
            k => answer_key(k).and_then(|key| given.get(key)).map(text),
        };
        match value {
            Some(v) => {
                out.insert(kind.to_string(), v);
            }
            None => {
                return Err(format!(
                    "the server asks '{kind}' ({}) and no answer was given{}",
                    p["message"].as_str().unwrap_or(""),
                    answer_key(kind)
                        .map(|k| format!(": add `{k}` to --answers"))
                        .unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

/// Starts the issuance through the agent (`via`: `agent` or the agent's id)
/// and follows it to the end.
pub fn issue(
    server: &str,
    token: &str,
    mut start: Value,
    via: &str,
    answers: &Map<String, Value>,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/').to_string();
    let http = client()?;
    let post = |path: &str, body: &Value| -> anyhow::Result<(u16, Value)> {
        let r = http
            .post(format!("{base}/api/v1{path}"))
            .bearer_auth(token)
            .json(body)
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {base}"))?;
        let s = r.status().as_u16();
        Ok((s, r.json().unwrap_or(Value::Null)))
    };
    start["via"] = json!(via);
    let serial = start["serial"].as_str().unwrap_or_default().to_string();
    let (status, first) = post("/issuance", &start)?;
    match status {
        201 => {}
        401 | 403 => bail!(
            "the server refused the token: {}",
            super::http::error_text(&first)
        ),
        400 | 404 | 409 => {
            if json_out {
                println!(
                    "{}",
                    json!({ "serial": serial, "state": "refused", "error": first["error"] })
                );
            } else {
                eprintln!(
                    "refused before the device was touched: {}",
                    super::http::error_text(&first)
                );
            }
            return Ok(ExitCode::from(3));
        }
        _ => bail!(
            "the server answered HTTP {status}: {}",
            super::http::error_text(&first)
        ),
    }
    let id = first["session_id"].as_str().unwrap_or_default().to_string();
    follow(&http, &base, token, &id, &serial, answers, json_out, total)
}

/// `keyward issue --retry` of a session bound to an agent: the retry is
/// relayed by that agent again; this client follows it and answers prompts.
pub fn retry(
    server: &str,
    token: &str,
    id: &str,
    serial: &str,
    answers: &Map<String, Value>,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/').to_string();
    let http = client()?;
    let r = http
        .post(format!("{base}/api/v1/issuance/{id}/retry"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .with_context(|| format!("cannot reach the Keyward server at {base}"))?;
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    if status != 200 {
        bail!(
            "retry refused (HTTP {status}): {}",
            super::http::error_text(&v)
        );
    }
    if !json_out {
        eprintln!("retrying session {id} on device {serial} through its agent");
    }
    follow(&http, &base, token, id, serial, answers, json_out, total)
}

/// Follows a session run by an agent: progress, prompts, the end.
#[allow(clippy::too_many_arguments)]
pub fn follow(
    http: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    id: &str,
    serial: &str,
    answers: &Map<String, Value>,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let mut last_step = String::new();
    let mut answered_seq = None;
    let session = loop {
        let r = http
            .get(format!("{base}/api/v1/issuance/{id}"))
            .bearer_auth(token)
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {base}"))?;
        let s: Value = r.json()?;
        let step = s["step"].as_str().unwrap_or_default().to_string();
        if !json_out && step != last_step {
            eprintln!("  {step}");
            last_step = step;
        }
        if s["status"] != "running" {
            break s;
        }
        let prompts: Vec<Value> = s["prompts"].as_array().cloned().unwrap_or_default();
        let seq = s["seq"].as_i64();
        let needs_answer = prompts.iter().any(|p| p["kind"] != "touch_device");
        if needs_answer && answered_seq != seq {
            let given = match answers_for(&prompts, answers) {
                Ok(a) => a,
                Err(msg) => bail!("{msg} (session {id} waits; cancel it with `keyward issue --cancel {id}` once it fails)"),
            };
            let result = json!({ "protocol": 1, "session_id": id, "seq": seq, "responses": [], "answers": given });
            let r = http
                .post(format!("{base}/api/v1/issuance/{id}/relay"))
                .bearer_auth(token)
                .json(&result)
                .send()
                .with_context(|| format!("cannot reach the Keyward server at {base}"))?;
            let status = r.status().as_u16();
            let v: Value = r.json().unwrap_or(Value::Null);
            if status == 400 {
                bail!(
                    "the server refused the answers: {}",
                    super::http::error_text(&v)
                );
            }
            answered_seq = seq;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let state = session["status"].as_str().unwrap_or("unknown").to_string();
    let credentials: Vec<Value> = session["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({ "kind": c["kind"], "slot": c["slot"], "serial": c["serial"], "id": c["id"], "expires": c["not_after"] }))
        .collect();
    let report = json!({
        "session_id": id,
        "serial": serial,
        "state": state,
        "via": "agent",
        "credentials": credentials,
        "error": session["error"],
        "counters": {
            "round_trips": session["seq"].as_i64().map(|s| s - 1),
            "total_ms": (total.elapsed().as_secs_f64() * 1e3).round(),
        },
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if state == "issued" {
        eprintln!(
            "issued through the agent: device {serial}, {} credential(s)",
            credentials.len()
        );
    } else {
        let e = &session["error"];
        eprintln!(
            "issuance {state} at '{}': {} [{}]\nsession {id}: retry with `keyward issue --retry {id}` or cancel with `keyward issue --cancel {id}`",
            e["step"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
            e["code"].as_str().unwrap_or(""),
        );
    }
    Ok(match state.as_str() {
        "issued" => ExitCode::SUCCESS,
        _ if session["error"]["code"] == "declined_by_person" => ExitCode::from(5),
        "cancelled" => ExitCode::from(5),
        _ => ExitCode::from(4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_answered_from_the_answers_file() {
        let given: Map<String, Value> =
            serde_json::from_value(json!({ "pin": "735194", "touch": true })).unwrap();
        let prompts = vec![
            json!({ "kind": "enter_pin", "message": "PIN" }),
            json!({ "kind": "confirm_pin", "message": "again" }),
            json!({ "kind": "confirm_touch", "message": "touch" }),
            json!({ "kind": "show_initial_pin", "message": "shown", "value": "112358" }),
            json!({ "kind": "touch_device", "message": "touch now" }),
        ];
        let a = answers_for(&prompts, &given).unwrap();
        assert_eq!(a["enter_pin"], "735194");
        assert_eq!(a["confirm_pin"], "735194");
        assert_eq!(a["confirm_touch"], "true");
        assert_eq!(a["show_initial_pin"], "112358");
        assert!(!a.contains_key("touch_device"));
        let err =
            answers_for(&[json!({ "kind": "set_fido_pin", "message": "x" })], &given).unwrap_err();
        assert!(err.contains("fido_pin"), "{err}");
    }
}
