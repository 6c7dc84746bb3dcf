//! `keyward issue`: the headless client of an issuance. It chooses the
//! device, asks the server to start the session, then only relays: it runs
//! each batch of device commands on the device, stops at the first status
//! word the server did not expect, and returns the responses. All card logic
//! is on the server; secret commands are never printed or stored here.
//!
//! Exit codes: 0 issued (or assigned with `--action assign`); 1 other errors (server unreachable, 401, no or
//! ambiguous device); 2 usage; 3 refused before the device was touched;
//! 4 failed during issuance (`--retry SESSION_ID` retries it, `--cancel SESSION_ID`
//! cancels it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use keyward_client::apdu::{transmit_one, ApduTransport};
use keyward_client::discover::{discover, DiscoveryOptions};
use keyward_client::pcsc::Pcsc;
use serde_json::{json, Value};

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
    /// The device policy's name.
    #[arg(long, required_unless_present_any = ["cancel", "retry"])]
    pub policy: Option<String>,
    /// Cancel a failed session instead: the device is no longer assigned to the user.
    #[arg(long, value_name = "SESSION_ID", conflicts_with_all = ["user", "policy", "serial", "reader", "answers"])]
    pub cancel: Option<String>,
    /// Retry a failed session: the same device (leave it in the reader),
    /// policy and PIN.
    #[arg(long, value_name = "SESSION_ID", conflicts_with_all = ["user", "policy", "serial", "reader", "answers", "cancel"])]
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
}

const EXIT_REFUSED: u8 = 3;
const EXIT_FAILED: u8 = 4;

fn read_answers(path: &Option<PathBuf>) -> anyhow::Result<serde_json::Map<String, Value>> {
    let Some(path) = path else {
        return Ok(Default::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?
    } else {
        serde_json::to_value(
            toml::from_str::<toml::Value>(&text)
                .with_context(|| format!("{}: not valid TOML", path.display()))?,
        )?
    };
    let known = [
        "pin",
        "confirm_pin",
        "new_pin",
        "fido_pin",
        "fido_current_pin",
        "touch",
    ];
    let map = value
        .as_object()
        .cloned()
        .ok_or_else(|| anyhow!("{}: expected a table of answers", path.display()))?;
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        bail!(
            "{}: unknown answer '{k}'; known: {}",
            path.display(),
            known.join(", ")
        );
    }
    Ok(map)
}

/// The reader of the device to issue: by serial, by reader name, or the only
/// supported device connected.
fn choose_reader(args: &IssueArgs) -> anyhow::Result<(String, String)> {
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

struct Relay {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Relay {
    fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {}", self.base))?;
        let status = r.status().as_u16();
        Ok((status, r.json().unwrap_or(Value::Null)))
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {}", self.base))?;
        Ok(r.json()?)
    }
}

fn server_error(v: &Value) -> String {
    let e = &v["error"];
    let mut s = format!(
        "[{}] {}",
        e["code"].as_str().unwrap_or("error"),
        e["message"].as_str().unwrap_or("")
    );
    if let Some(f) = e["field"].as_str() {
        s = format!("{f}: {s}");
    }
    s
}

#[derive(Default)]
struct Counters {
    apdus: u64,
    bytes_out: u64,
    bytes_in: u64,
    round_trips: u64,
    device_ms: f64,
}

/// Runs one batch on the device: responses up to the first unexpected
/// status word, or a transport error.
fn run_batch(
    card: &mut dyn ApduTransport,
    batch: &Value,
    counters: &mut Counters,
    json: bool,
) -> (Vec<Value>, Option<String>) {
    let mut out = Vec::new();
    let mut last_step = String::new();
    for c in batch["commands"].as_array().into_iter().flatten() {
        let step = c["step"].as_str().unwrap_or("");
        if !json && step != last_step {
            eprintln!("  {step}");
            last_step = step.to_string();
        }
        if c["channel"] != "piv" {
            return (out, Some("protocol".into()));
        }
        let Ok(bytes) = hex::decode(c["bytes"].as_str().unwrap_or("")) else {
            return (out, Some("protocol".into()));
        };
        let started = Instant::now();
        let result = transmit_one(card, &bytes);
        counters.device_ms += started.elapsed().as_secs_f64() * 1e3;
        counters.apdus += 1;
        counters.bytes_out += bytes.len() as u64;
        match result {
            Ok(r) => {
                counters.bytes_in += r.data.len() as u64 + 2;
                let sw = format!("{:04x}", r.sw);
                let expected = c["expect"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e.as_str() == Some(sw.as_str()));
                out.push(json!({ "data": hex::encode(&r.data), "sw": sw }));
                if !expected {
                    break;
                }
            }
            Err(e) => return (out, Some(e.code().to_string())),
        }
    }
    (out, None)
}

/// `--cancel SESSION_ID`: ends a failed attempt; the device is no longer
/// assigned to the user.
fn cancel(relay: &Relay, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (status, v) = relay.post(&format!("/issuance/{id}/cancel"), &json!({}))?;
    if status != 200 {
        bail!("cancel refused (HTTP {status}): {}", server_error(&v));
    }
    if json {
        let report = json!({ "session_id": id, "serial": v["serial"], "state": v["status"] });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "cancelled: device {} is no longer assigned to {}",
            v["serial"].as_str().unwrap_or(""),
            v["user"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--action assign`: binds the device to the user with the policy.
fn assign(relay: &Relay, args: &IssueArgs, user: &str, policy: &str) -> anyhow::Result<ExitCode> {
    let serial = args
        .serial
        .as_deref()
        .ok_or_else(|| anyhow!("--action assign needs --serial"))?;
    let (status, v) = relay.post(
        "/issuance",
        &json!({ "user": user, "policy": policy, "serial": serial, "action": "assign" }),
    )?;
    match status {
        201 => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!("assigned: device {serial} to {user} with policy \"{policy}\"");
            }
            Ok(ExitCode::SUCCESS)
        }
        401 | 403 => bail!("the server refused the token: {}", server_error(&v)),
        _ => {
            eprintln!("refused: {}", server_error(&v));
            Ok(ExitCode::from(EXIT_REFUSED))
        }
    }
}

pub fn run(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let total = Instant::now();
    if args.token.is_empty() {
        bail!("no API token: pass --token or set KEYWARD_TOKEN");
    }
    let relay = Relay {
        http: reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()?,
        base: args.server.trim_end_matches('/').to_string(),
        token: args.token.clone(),
    };
    if let Some(id) = &args.cancel {
        return cancel(&relay, id, args.json);
    }
    if let Some(id) = &args.retry {
        let session = relay.get(&format!("/issuance/{id}"))?;
        let serial = session["serial"]
            .as_str()
            .ok_or_else(|| anyhow!("no session {id}: {}", server_error(&session)))?
            .to_string();
        let found = IssueArgs {
            serial: Some(serial.clone()),
            ..args.clone()
        };
        let (reader, serial) = choose_reader(&found)?;
        let (status, batch) = relay.post(&format!("/issuance/{id}/retry"), &json!({}))?;
        if status != 200 {
            bail!("retry refused (HTTP {status}): {}", server_error(&batch));
        }
        if !args.json {
            eprintln!("retrying session {id} on device {serial} in \"{reader}\"");
        }
        return relay_session(&relay, &reader, &serial, batch, args.json, total);
    }
    let (user, policy) = (
        args.user.clone().unwrap_or_default(),
        args.policy.clone().unwrap_or_default(),
    );
    if args.action == "assign" {
        return assign(&relay, &args, &user, &policy);
    }
    let answers = read_answers(&args.answers)?;
    let (reader, serial) = choose_reader(&args)?;
    let mut start = json!({ "user": user, "policy": policy, "serial": serial });
    for k in ["pin", "confirm_pin"] {
        if let Some(v) = answers.get(k) {
            start[k] = v.clone();
        }
    }
    if !args.json {
        eprintln!("issuing device {serial} in \"{reader}\" to {user} with policy \"{policy}\"");
    }
    let (status, batch) = relay.post("/issuance", &start)?;
    match status {
        201 => {}
        401 | 403 => bail!("the server refused the token: {}", server_error(&batch)),
        400 | 404 | 409 => {
            let msg = server_error(&batch);
            if args.json {
                println!(
                    "{}",
                    json!({ "serial": serial, "state": "refused", "error": batch["error"] })
                );
            } else {
                eprintln!("refused before the device was touched: {msg}");
            }
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
        _ => bail!(
            "the server answered HTTP {status}: {}",
            server_error(&batch)
        ),
    }
    relay_session(&relay, &reader, &serial, batch, args.json, total)
}

/// Relays a session's batches to the device in `reader` until it ends, then
/// reports it.
fn relay_session(
    relay: &Relay,
    reader: &str,
    serial: &str,
    mut batch: Value,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let id = batch["session_id"].as_str().unwrap_or_default().to_string();
    let pcsc = Pcsc::establish()?;
    let mut card = pcsc.connect(reader)?;
    let mut counters = Counters::default();
    while batch["state"] == "running" {
        let (responses, transport_error) = run_batch(&mut card, &batch, &mut counters, json_out);
        let mut result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses });
        if let Some(e) = &transport_error {
            result["transport_error"] = json!(e);
        }
        let (status, next) = relay.post(&format!("/issuance/{id}/relay"), &result)?;
        counters.round_trips += 1;
        if status != 200 {
            bail!(
                "the server refused the device's answers (HTTP {status}): {}",
                server_error(&next)
            );
        }
        batch = next;
    }
    let session = relay.get(&format!("/issuance/{id}"))?;
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
        "credentials": credentials,
        "error": session["error"],
        "counters": {
            "apdus": counters.apdus, "bytes_out": counters.bytes_out, "bytes_in": counters.bytes_in,
            "round_trips": counters.round_trips, "device_ms": counters.device_ms.round(),
            "total_ms": (total.elapsed().as_secs_f64() * 1e3).round(),
        },
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if state == "issued" {
        eprintln!(
            "issued: device {serial}, {} credential(s), {} round trips",
            credentials.len(),
            counters.round_trips
        );
    } else {
        let e = &session["error"];
        eprintln!(
            "issuance failed at '{}': {} [{}]{}\nsession {id}: retry with `keyward issue --retry {id}` (leave the device in the reader) or cancel with `keyward issue --cancel {id}`",
            e["step"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
            e["code"].as_str().unwrap_or(""),
            e["sw"].as_str().map(|sw| format!(" SW {sw}")).unwrap_or_default()
        );
    }
    Ok(if state == "issued" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}
