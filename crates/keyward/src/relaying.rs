//! Relaying a device session from the command line (`keyward issue`,
//! `keyward recycle`): the person's answers to prompts, the batches run on
//! a device connected here, a session followed while a workstation agent
//! relays it, and what it cost. All card logic is on the server; secret
//! commands are never printed or stored here.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use keyward_engine::PromptKind;
use keyward_proto::{
    RelayBatch, RelayPrompt, RelayResult, SessionError, SessionView, RELAY_PROTOCOL_VERSION,
};
use keyward_transport::pcsc::{Disposition, Pcsc};
use serde_json::{json, Map, Value};

use crate::agent::relay::{run_batch, BatchRun, CardIo, CardWithHid};
use crate::api::ApiClient;

pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_FAILED: u8 = 4;
pub const EXIT_DECLINED: u8 = 5;

/// The exit code of a session that ended other than well: 5 when the person
/// declined (error code `declined_by_person`), else 4.
pub fn failure_exit(error: Option<&SessionError>) -> u8 {
    match error {
        Some(e) if e.code == "declined_by_person" => EXIT_DECLINED,
        _ => EXIT_FAILED,
    }
}

/// The `--answers` file (TOML or JSON): `pin`, `confirm_pin`, `new_pin`,
/// `fido_pin`, `fido_current_pin`, `touch`.
pub fn read_answers(path: &Option<PathBuf>) -> anyhow::Result<Map<String, Value>> {
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
    let known: Vec<&str> = PromptKind::ALL
        .iter()
        .filter_map(|k| k.answers_key())
        .collect();
    let Value::Object(map) = value else {
        bail!("{}: expected a table of answers", path.display());
    };
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        bail!(
            "{}: unknown answer '{k}'; known: {}",
            path.display(),
            known.join(", ")
        );
    }
    Ok(map)
}

/// Where the person's answers come from: the `--answers` file, then the
/// terminal (when stdin is one).
pub struct Answers {
    pub given: Map<String, Value>,
    pub interactive: bool,
}

impl Answers {
    pub fn new(given: Map<String, Value>) -> Answers {
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
    pub fn answer(&self, prompts: &[RelayPrompt]) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for p in prompts {
            let kind = PromptKind::parse(&p.kind);
            let key = kind.and_then(PromptKind::answers_key);
            let from_file = match kind {
                // Answered by typing back the PIN just shown.
                Some(PromptKind::ShowInitialPin) => p.value.clone(),
                Some(PromptKind::ConfirmPin) => {
                    self.given("confirm_pin").or_else(|| self.given("pin"))
                }
                // Shown while the device works; nothing to answer.
                Some(PromptKind::TouchDevice) => continue,
                _ => key.and_then(|k| self.given(k)),
            };
            let value = match (from_file, kind) {
                (Some(v), _) => v,
                (None, Some(kind)) if self.interactive => self.ask(kind, &p.message)?,
                // Nobody to ask: a reinsertion is assumed done.
                (None, Some(PromptKind::ReinsertDevice)) => "done".to_string(),
                (None, _) => bail!(
                    "the server asks '{}' ({}) and no answer was given: {}",
                    p.kind,
                    p.message,
                    key.map(|k| format!("add `{k}` to --answers (or run on a terminal)"))
                        .unwrap_or_else(|| "run on a terminal".to_string())
                ),
            };
            out.insert(p.kind.clone(), value);
        }
        Ok(out)
    }

    /// Asks the person at the terminal (PINs without echo).
    fn ask(&self, kind: PromptKind, message: &str) -> anyhow::Result<String> {
        Ok(match kind {
            PromptKind::SetNewPin | PromptKind::SetFidoPin => loop {
                let a = self.ask_secret(message)?;
                let b = self.ask_secret("The same PIN again")?;
                if a == b {
                    break a;
                }
                eprintln!("the two PINs differ; again");
            },
            PromptKind::EnterPin | PromptKind::ConfirmPin | PromptKind::EnterFidoPin => {
                self.ask_secret(message)?
            }
            PromptKind::ConfirmTouch => {
                let a = self.ask_line(&format!("{message} [y/N]"))?;
                (a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes")).to_string()
            }
            PromptKind::ReinsertDevice => {
                self.ask_line(&format!("{message}, then press Enter"))?;
                "done".to_string()
            }
            other => bail!(
                "the server asks '{}', which this client does not answer",
                other.as_str()
            ),
        })
    }
}

/// What a session cost on the device, in total and per step.
#[derive(Default)]
pub struct Counters {
    pub apdus: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub round_trips: u64,
    pub device_ms: f64,
    /// Per step (the `step` each command carries): APDUs, bytes out, bytes
    /// in, milliseconds.
    pub steps: BTreeMap<String, (u64, u64, u64, f64)>,
}

impl Counters {
    fn add(&mut self, run: &BatchRun) {
        self.round_trips += 1;
        for c in &run.commands {
            self.apdus += 1;
            self.bytes_out += c.bytes_out;
            self.bytes_in += c.bytes_in;
            self.device_ms += c.ms;
            let s = self.steps.entry(c.step.clone()).or_default();
            *s = (s.0 + 1, s.1 + c.bytes_out, s.2 + c.bytes_in, s.3 + c.ms);
        }
    }

    pub fn json(&self, total: Instant) -> Value {
        let steps: Map<String, Value> = self
            .steps
            .iter()
            .map(|(step, (apdus, out, inn, ms))| {
                (
                    step.clone(),
                    json!({ "apdus": apdus, "bytes_out": out, "bytes_in": inn,
                            "device_ms": (ms * 10.0).round() / 10.0 }),
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

/// Runs a session's batches until it ends: command batches on the device
/// in `reader` (CTAP messages to `fido`, CTAPHID, when given; else over
/// ISO 7816 in the reader), prompt batches answered by the person. Answers
/// the session id and the counters (prompt batches are not round trips to
/// the device).
pub fn drive(
    client: &ApiClient,
    reader: &str,
    mut fido: Option<Box<dyn keyward_transport::ctap::CtapTransport>>,
    mut batch: RelayBatch,
    answers: &Answers,
    json_out: bool,
) -> anyhow::Result<(String, Counters)> {
    let id = batch.session_id.clone();
    let pcsc = Pcsc::establish()?;
    let mut card = pcsc.connect(reader)?;
    let mut counters = Counters::default();
    let mut device_gone = false;
    while batch.state == keyward_domain::SessionStatus::Running {
        let prompts_only = batch.commands.is_empty() && !batch.prompts.is_empty();
        let result = if prompts_only {
            if !json_out {
                eprintln!("  {}", batch.step);
            }
            let given = answers.answer(&batch.prompts).map_err(|e| {
                anyhow!("{e}\nsession {id} waits for the answer (a person's client can give it)")
            })?;
            if given.contains_key(PromptKind::ReinsertDevice.as_str()) {
                // The device was taken out and put back: a new connection
                // (waiting for it to be back in the reader).
                card.reconnect(Duration::from_secs(60))?;
            }
            RelayResult {
                protocol: RELAY_PROTOCOL_VERSION,
                session_id: id.clone(),
                seq: batch.seq,
                responses: vec![],
                answers: given,
                transport_error: None,
            }
        } else {
            for p in &batch.prompts {
                if !json_out {
                    eprintln!("  >> {}", p.message);
                }
            }
            // One PC/SC transaction per batch: no other program's command
            // reaches the card between the commands of a batch.
            let hid = fido.as_deref_mut().map(|f| f as _);
            let run = card
                .with_transaction(|t| {
                    let mut io = CardWithHid {
                        card: CardIo::new(t),
                        hid,
                    };
                    run_batch(&mut io, &batch)
                })
                .unwrap_or_else(|e| crate::agent::relay::failed(&batch, &e));
            if !json_out {
                let mut last = "";
                for c in &run.commands {
                    if c.step != last {
                        eprintln!("  {}", c.step);
                        last = &c.step;
                    }
                }
            }
            if let Some(e) = &run.result.transport_error {
                device_gone |= keyward_transport::TransportError::code_means_device_gone(e);
            }
            counters.add(&run);
            run.result
        };
        match client.relay(&result)? {
            Ok(next) => batch = next,
            // A refused answer (PIN rules): the same prompts are still out.
            Err(e) if prompts_only && e.status == 400 && answers.interactive => {
                eprintln!("refused: {e}");
            }
            Err(e) if prompts_only && e.status == 400 => bail!(
                "the server refused the answer: {e}\nsession {id} still waits for it: correct --answers and answer it, or let it be abandoned"
            ),
            Err(e) => bail!("the server refused the device's answers: {e}"),
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

/// Follows a session a workstation agent relays: progress on stderr, the
/// prompts answered here (once per batch), until it ends (at most 10
/// minutes). Answers its last status.
pub fn follow(
    client: &ApiClient,
    id: &str,
    answers: &Answers,
    json_out: bool,
) -> anyhow::Result<SessionView> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut answered = None;
    let mut last_step = String::new();
    loop {
        let s = client.session(id)??;
        if !json_out && s.step != last_step {
            eprintln!("  {}", s.step);
            last_step = s.step.clone();
        }
        if s.status != keyward_domain::SessionStatus::Running {
            return Ok(s);
        }
        let needs_answer = s
            .prompts
            .iter()
            .any(|p| p.kind != PromptKind::TouchDevice.as_str());
        if needs_answer && answered != Some(s.seq) {
            let given = answers.answer(&s.prompts).map_err(|e| {
                anyhow!("{e} (session {id} waits; cancel it with `keyward issue --cancel {id}` once it fails)")
            })?;
            let result = RelayResult {
                protocol: RELAY_PROTOCOL_VERSION,
                session_id: id.to_string(),
                seq: s.seq as u64,
                responses: vec![],
                answers: given,
                transport_error: None,
            };
            // (Another move of the session meanwhile, 409, is seen at the
            // next look.)
            match client.relay(&result)? {
                Err(e) if e.status == 400 => bail!("the server refused the answers: {e}"),
                _ => {}
            }
            answered = Some(s.seq);
        }
        if Instant::now() > deadline {
            bail!("session {id} did not end within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The credentials of a session as `--json` reports them.
pub fn credentials_json(s: &SessionView) -> Vec<Value> {
    s.credentials
        .iter()
        .map(|c| {
            json!({ "kind": c.kind, "slot": c.slot, "serial": c.serial, "id": c.id, "attested": c.attested,
                    "expires": c.not_after.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()) })
        })
        .collect()
}

/// `step: message [code] SW xxxx` of a session's error.
pub fn error_line(e: Option<&SessionError>) -> String {
    match e {
        None => String::new(),
        Some(e) => format!(
            "'{}': {} [{}]{}",
            e.step,
            e.message,
            e.code,
            e.sw.as_deref()
                .map(|sw| format!(" SW {sw}"))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(kind: &str, value: Option<&str>) -> RelayPrompt {
        RelayPrompt {
            kind: kind.into(),
            message: format!("{kind}?"),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn a_declined_touch_exits_5_other_failures_4() {
        let e = |code: &str| SessionError {
            code: code.into(),
            step: "reset FIDO".into(),
            message: String::new(),
            sw: None,
            tries_left: None,
            session: None,
            at: None,
        };
        assert_eq!(failure_exit(Some(&e("declined_by_person"))), 5);
        assert_eq!(failure_exit(Some(&e("unexpected_status"))), 4);
        assert_eq!(failure_exit(None), 4);
    }

    #[test]
    fn prompts_are_answered_from_the_file_or_name_the_missing_key() {
        let given = json!({ "pin": "735194", "new_pin": "582039", "touch": false });
        let Value::Object(given) = given else {
            unreachable!()
        };
        let answers = Answers {
            given,
            interactive: false,
        };
        let prompts = vec![
            prompt("set_new_pin", None),
            prompt("confirm_pin", None),
            prompt("show_initial_pin", Some("918273")),
            prompt("confirm_touch", None),
            prompt("reinsert_device", None),
            prompt("touch_device", None),
        ];
        let a = answers.answer(&prompts).unwrap();
        assert_eq!(a.get("set_new_pin").map(String::as_str), Some("582039"));
        assert_eq!(
            a.get("confirm_pin").map(String::as_str),
            Some("735194"),
            "confirm_pin defaults to pin"
        );
        assert_eq!(
            a.get("show_initial_pin").map(String::as_str),
            Some("918273")
        );
        assert_eq!(a.get("confirm_touch").map(String::as_str), Some("false"));
        assert_eq!(a.get("reinsert_device").map(String::as_str), Some("done"));
        assert!(!a.contains_key("touch_device"));
        let e = answers
            .answer(&[prompt("set_fido_pin", None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fido_pin`"), "{e}");
    }
}
