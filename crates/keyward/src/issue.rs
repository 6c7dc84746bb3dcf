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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use keyward_transport::apdu::{transmit_one, ApduTransport};
use keyward_transport::discover::{discover, DiscoveryOptions};
use keyward_transport::pcsc::{Disposition, Pcsc};
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

pub(crate) const EXIT_REFUSED: u8 = 3;
pub(crate) const EXIT_FAILED: u8 = 4;
pub(crate) const EXIT_DECLINED: u8 = 5;

/// The exit code of a session that ended other than well: 5 when the person
/// declined (error code `declined_by_person`), else 4.
pub(crate) fn failure_exit(error: &Value) -> u8 {
    if error["code"] == "declined_by_person" {
        EXIT_DECLINED
    } else {
        EXIT_FAILED
    }
}

pub(crate) fn read_answers(
    path: &Option<PathBuf>,
) -> anyhow::Result<serde_json::Map<String, Value>> {
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

pub(crate) struct Relay {
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl Relay {
    pub(crate) fn new(server: &str, token: &str) -> anyhow::Result<Relay> {
        if token.is_empty() {
            bail!("no API token: pass --token or set KEYWARD_TOKEN");
        }
        Ok(Relay {
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()?,
            base: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
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

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the Keyward server at {}", self.base))?;
        Ok(r.json()?)
    }
}

pub(crate) fn server_error(v: &Value) -> String {
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
pub(crate) struct Counters {
    pub(crate) apdus: u64,
    pub(crate) bytes_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) round_trips: u64,
    pub(crate) device_ms: f64,
    /// The same, per issuance step (the `step` each command carries).
    pub(crate) steps: std::collections::BTreeMap<String, StepCounters>,
}

/// What one step of the session cost on the device.
#[derive(Default)]
pub(crate) struct StepCounters {
    apdus: u64,
    bytes_out: u64,
    bytes_in: u64,
    device_ms: f64,
}

impl Counters {
    /// One command sent (`bytes_in`: its response with the status word, if any).
    pub(crate) fn command(&mut self, step: &str, bytes_out: usize, bytes_in: usize, ms: f64) {
        self.apdus += 1;
        self.bytes_out += bytes_out as u64;
        self.bytes_in += bytes_in as u64;
        self.device_ms += ms;
        let s = self.steps.entry(step.to_string()).or_default();
        s.apdus += 1;
        s.bytes_out += bytes_out as u64;
        s.bytes_in += bytes_in as u64;
        s.device_ms += ms;
    }

    pub(crate) fn json(&self, total: Instant) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .map(|(step, s)| {
                (
                    step.clone(),
                    json!({ "apdus": s.apdus, "bytes_out": s.bytes_out, "bytes_in": s.bytes_in,
                            "device_ms": (s.device_ms * 10.0).round() / 10.0 }),
                )
            })
            .collect();
        json!({
            "apdus": self.apdus, "bytes_out": self.bytes_out, "bytes_in": self.bytes_in,
            "round_trips": self.round_trips, "device_ms": self.device_ms.round(),
            "total_ms": (total.elapsed().as_secs_f64() * 1e3).round(),
            "steps": steps,
        })
    }
}

/// Where the person's answers come from: the `--answers` file, then the
/// terminal (when stdin is one).
pub(crate) struct Answers {
    pub(crate) given: serde_json::Map<String, Value>,
    pub(crate) interactive: bool,
}

impl Answers {
    pub(crate) fn new(given: serde_json::Map<String, Value>) -> Answers {
        Answers {
            given,
            interactive: std::io::stdin().is_terminal(),
        }
    }

    fn given(&self, key: &str) -> Option<String> {
        self.given.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    fn ask_secret(&self, message: &str) -> anyhow::Result<String> {
        Ok(rpassword::prompt_password(format!("{message}: "))?)
    }

    fn ask_line(&self, message: &str) -> anyhow::Result<String> {
        eprint!("{message} ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// The answers to a prompt batch: kind → value.
    pub(crate) fn answer(&self, prompts: &[Value]) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for p in prompts {
            let kind = p["kind"].as_str().unwrap_or_default();
            let message = p["message"].as_str().unwrap_or_default();
            let key = answers_key(kind);
            let from_file = match kind {
                // Answered by typing back the PIN just shown.
                "show_initial_pin" => p["value"].as_str().map(str::to_string),
                "confirm_pin" => self.given("confirm_pin").or_else(|| self.given("pin")),
                "touch_device" => continue,
                _ => key.and_then(|k| self.given(k)),
            };
            let value = match from_file {
                Some(v) => v,
                None if self.interactive => match kind {
                    "set_new_pin" | "set_fido_pin" => loop {
                        let a = self.ask_secret(message)?;
                        let b = self.ask_secret("The same PIN again")?;
                        if a == b {
                            break a;
                        }
                        eprintln!("the two PINs differ; again");
                    },
                    "enter_pin" | "confirm_pin" | "enter_fido_pin" => self.ask_secret(message)?,
                    "confirm_touch" => {
                        let a = self.ask_line(&format!("{message} [y/N]"))?;
                        (a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes")).to_string()
                    }
                    "reinsert_device" => {
                        self.ask_line(&format!("{message}, then press Enter"))?;
                        "done".to_string()
                    }
                    other => bail!("the server asks '{other}', which this client does not know"),
                },
                // Nobody to ask: a reinsertion is assumed done.
                None if kind == "reinsert_device" => "done".to_string(),
                None => bail!(
                    "the server asks '{kind}' ({message}) and no answer was given: {}",
                    key.map(|k| format!("add `{k}` to --answers (or run on a terminal)"))
                        .unwrap_or_else(|| "run on a terminal".to_string())
                ),
            };
            out.insert(kind.to_string(), value);
        }
        Ok(out)
    }
}

/// The `--answers` key answering a prompt kind (docs/protocol.md, Prompts).
pub(crate) fn answers_key(kind: &str) -> Option<&'static str> {
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

/// Runs one batch on the device: responses up to the first unexpected
/// status word, or a transport error.
/// CTAP messages go to `fido` (CTAPHID) when given, else over ISO 7816 in
/// the reader; a CTAP answer's data is the CTAP response, its status 9000.
fn run_batch_fido(
    card: &mut dyn ApduTransport,
    mut fido: Option<&mut Box<dyn keyward_transport::ctap::CtapTransport>>,
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
        let Ok(bytes) = hex::decode(c["bytes"].as_str().unwrap_or("")) else {
            return (out, Some("protocol".into()));
        };
        let started = Instant::now();
        let result = match c["channel"].as_str() {
            Some("piv") => transmit_one(card, &bytes),
            // A CTAP message to a device reached over PC/SC: wrapped in
            // ISO 7816 (SELECT the FIDO application, then CTAP MSG 80 10).
            Some("ctap") => match fido.as_mut() {
                Some(hid) => {
                    // A touch may be awaited: keep-alives restart the wait.
                    let mut control = keyward_transport::ctap::CtapControl {
                        idle_timeout: std::time::Duration::from_secs(30),
                        ..Default::default()
                    };
                    hid.ctap(&bytes, &mut control).map(|data| {
                        keyward_transport::card::apdu::ResponseApdu { data, sw: 0x9000 }
                    })
                }
                None => ctap_over_iso(card, &bytes),
            },
            _ => return (out, Some("protocol".into())),
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let step = c["step"].as_str().unwrap_or("");
        let bytes_in = result.as_ref().map(|r| r.data.len() + 2).unwrap_or(0);
        counters.command(step, bytes.len(), bytes_in, ms);
        match result {
            Ok(r) => {
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

/// A CTAP message over ISO 7816: the response data is the CTAP answer
/// (status byte + CBOR).
fn ctap_over_iso(
    card: &mut dyn ApduTransport,
    message: &[u8],
) -> Result<keyward_transport::card::apdu::ResponseApdu, keyward_transport::TransportError> {
    const FIDO_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x06, 0x47, 0x2F, 0x00, 0x01];
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, FIDO_AID.len() as u8];
    select.extend_from_slice(&FIDO_AID);
    let r = transmit_one(card, &select)?;
    if r.sw != 0x9000 {
        return Ok(r);
    }
    let mut msg = vec![0x80, 0x10, 0x80, 0x00];
    if message.len() <= 255 {
        msg.push(message.len() as u8);
        msg.extend_from_slice(message);
        msg.push(0x00);
    } else {
        msg.push(0x00);
        msg.extend_from_slice(&(message.len() as u16).to_be_bytes());
        msg.extend_from_slice(message);
        msg.extend_from_slice(&[0x00, 0x00]);
    }
    transmit_one(card, &msg)
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
    let relay = Relay::new(&args.server, &args.token)?;
    if let Some(id) = &args.cancel {
        return cancel(&relay, id, args.json);
    }
    if let Some(id) = &args.retry {
        let session = relay.get(&format!("/issuance/{id}"))?;
        let serial = session["serial"]
            .as_str()
            .ok_or_else(|| anyhow!("no session {id}: {}", server_error(&session)))?
            .to_string();
        // A session bound to a workstation agent is retried through it: no
        // local reader is needed (or used).
        if session["agent"].is_string() {
            return crate::agent::via_agent::retry(
                &args.server,
                &args.token,
                id,
                &serial,
                &read_answers(&args.answers)?,
                args.json,
                total,
            );
        }
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
        let answers = Answers::new(read_answers(&args.answers)?);
        let fido = fido_hid(&serial, &args.hid_sockets);
        return relay_session(
            &relay,
            (&reader, fido),
            &serial,
            batch,
            &answers,
            args.json,
            total,
        );
    }
    let (user, policy) = (
        args.user.clone().unwrap_or_default(),
        args.policy.clone().unwrap_or_default(),
    );
    if args.action == "assign" {
        return assign(&relay, &args, &user, &policy);
    }
    let answers = read_answers(&args.answers)?;
    let with_pins = |serial: &str| {
        let mut start = json!({ "user": user, "policy": policy, "serial": serial });
        for k in ["pin", "confirm_pin"] {
            if let Some(v) = answers.get(k) {
                start[k] = v.clone();
            }
        }
        start
    };
    let (reader, serial) = match choose_reader(&args) {
        Ok(found) => found,
        Err(local) => {
            // Not connected here: a device a paired workstation agent reports
            // runs through that agent (this client answers the prompts).
            let reported = match &args.serial {
                Some(s) => crate::agent::via_agent::agent_devices(&args.server, &args.token)?
                    .into_iter()
                    .find(|d| &d.serial == s),
                None => None,
            };
            let Some(d) = reported else {
                return Err(local);
            };
            if !args.json {
                eprintln!(
                    "issuing device {} through the agent \"{}\" to {user} with policy \"{policy}\"",
                    d.serial, d.agent_name
                );
            }
            return crate::agent::via_agent::issue(
                &args.server,
                &args.token,
                with_pins(&d.serial),
                &d.agent_id,
                &answers,
                args.json,
                total,
            );
        }
    };
    let start = with_pins(&serial);
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
    let answers = Answers::new(answers);
    let fido = fido_hid(&serial, &args.hid_sockets);
    relay_session(
        &relay,
        (&reader, fido),
        &serial,
        batch,
        &answers,
        args.json,
        total,
    )
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

/// Runs a session's batches until it ends: command batches on the device
/// in `reader` (CTAP messages to `fido`, CTAPHID, when given; else over
/// ISO 7816 in the reader), prompt batches answered by the person. Returns
/// the session id and the counters (prompt batches are not round trips to
/// the device).
pub(crate) fn drive_with_fido(
    relay: &Relay,
    reader: &str,
    mut fido: Option<Box<dyn keyward_transport::ctap::CtapTransport>>,
    mut batch: Value,
    answers: &Answers,
    json_out: bool,
) -> anyhow::Result<(String, Counters)> {
    let id = batch["session_id"].as_str().unwrap_or_default().to_string();
    let pcsc = Pcsc::establish()?;
    let mut card = pcsc.connect(reader)?;
    let mut counters = Counters::default();
    let mut device_gone = false;
    while batch["state"] == "running" {
        let commands = batch["commands"].as_array().map(Vec::len).unwrap_or(0);
        let prompts: Vec<Value> = batch["prompts"].as_array().cloned().unwrap_or_default();
        let mut result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": [] });
        if commands == 0 && !prompts.is_empty() {
            if !json_out {
                eprintln!("  {}", batch["step"].as_str().unwrap_or(""));
            }
            let given = answers.answer(&prompts).map_err(|e| {
                anyhow!("{e}\nsession {id} waits for the answer (a person's client can give it)")
            })?;
            if given.contains_key("reinsert_device") {
                // The device was taken out and put back: a new connection
                // (waiting for it to be back in the reader).
                card.reconnect(std::time::Duration::from_secs(60))?;
            }
            result["answers"] = json!(given);
        } else {
            for p in &prompts {
                if !json_out {
                    eprintln!("  >> {}", p["message"].as_str().unwrap_or(""));
                }
            }
            // One PC/SC transaction per batch: no other program's command
            // reaches the card between the commands of a batch.
            let (responses, transport_error) = card
                .with_transaction(|t| {
                    run_batch_fido(t, fido.as_mut(), &batch, &mut counters, json_out)
                })
                .unwrap_or_else(|e| (Vec::new(), Some(e.code().to_string())));
            result["responses"] = json!(responses);
            if let Some(e) = &transport_error {
                device_gone |= keyward_transport::TransportError::code_means_device_gone(e);
                result["transport_error"] = json!(e);
            }
            counters.round_trips += 1;
        }
        let (status, next) = relay.post(&format!("/issuance/{id}/relay"), &result)?;
        match status {
            200 => batch = next,
            // A refused answer (PIN rules): the same prompts are still out.
            400 if commands == 0 && answers.interactive => {
                eprintln!("refused: {}", server_error(&next));
            }
            400 if commands == 0 => bail!(
                "the server refused the answer: {}\nsession {id} still waits for it: correct --answers and answer it, or let it be abandoned",
                server_error(&next)
            ),
            _ => bail!(
                "the server refused the device's answers (HTTP {status}): {}",
                server_error(&next)
            ),
        }
    }
    // The session is over: its security state (verified PIN, authenticated
    // management key) must not outlive it. Left early (an error above), the
    // connection ends with LEAVE_CARD: the session may still go on. A device
    // that left (seen on either of its sides) is not reset.
    card.end(if device_gone {
        Disposition::Leave
    } else {
        Disposition::Reset
    });
    Ok((id, counters))
}

/// Relays a session to its end, then reports it (and the exit code).
fn relay_session(
    relay: &Relay,
    (reader, fido): (
        &str,
        Option<Box<dyn keyward_transport::ctap::CtapTransport>>,
    ),
    serial: &str,
    batch: Value,
    answers: &Answers,
    json_out: bool,
    total: Instant,
) -> anyhow::Result<ExitCode> {
    let (id, counters) = drive_with_fido(relay, reader, fido, batch, answers, json_out)?;
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
        "counters": counters.json(total),
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
        ExitCode::from(failure_exit(&session["error"]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declined_touch_exits_5_other_failures_4() {
        assert_eq!(
            failure_exit(&json!({ "code": "declined_by_person", "step": "reset FIDO" })),
            5
        );
        assert_eq!(failure_exit(&json!({ "code": "unexpected_status" })), 4);
        assert_eq!(failure_exit(&Value::Null), 4);
    }

    #[test]
    fn prompts_are_answered_from_the_file_or_name_the_missing_key() {
        let given = json!({ "pin": "735194", "new_pin": "582039", "touch": false });
        let answers = Answers {
            given: given.as_object().unwrap().clone(),
            interactive: false,
        };
        let prompts = vec![
            json!({ "kind": "set_new_pin", "message": "Choose" }),
            json!({ "kind": "confirm_pin", "message": "Again" }),
            json!({ "kind": "show_initial_pin", "message": "Your PIN", "value": "918273" }),
            json!({ "kind": "confirm_touch", "message": "Touch" }),
            json!({ "kind": "reinsert_device", "message": "Reinsert" }),
            json!({ "kind": "touch_device", "message": "informational" }),
        ];
        let a = answers.answer(&prompts).unwrap();
        assert_eq!(a["set_new_pin"], "582039");
        assert_eq!(a["confirm_pin"], "735194", "confirm_pin defaults to pin");
        assert_eq!(a["show_initial_pin"], "918273");
        assert_eq!(a["confirm_touch"], "false");
        assert_eq!(a["reinsert_device"], "done");
        assert!(!a.contains_key("touch_device"));
        let e = answers
            .answer(&[json!({ "kind": "set_fido_pin", "message": "FIDO PIN" })])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fido_pin`"), "{e}");
    }
}
