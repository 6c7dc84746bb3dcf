//! `keyward agent --server URL`: the workstation agent.
//!
//! * It only connects out (no listening port): pairs once by device code
//!   (prints `pairing code: XXXX-XXXX`, polls until a person approves it in
//!   the portal or an administrator runs `keyward admin agent approve CODE`),
//!   and keeps its credential in `--state-dir` (mode 0600).
//! * It reports its connected devices, and their arrival and removal as they
//!   happen (looking about every second, see [`devices`]).
//! * It long-polls the server for the command batches of the sessions bound
//!   to it and relays them exactly as `keyward issue` does ([`relay`]),
//!   posting each result to the session's relay endpoint. Prompts are not
//!   its business: the person's client answers them.
//! * A session holds its device on one connection from its first batch to
//!   its end ([`held`]); the watcher never probes a held device, and the
//!   server tells the agent (in the long-poll's answer) which held sessions
//!   have ended elsewhere (cancelled, abandoned).
//!
//! `keyward demo` runs the same loop in-process ([`run_paired`]) with
//! virtual devices only.

pub mod devices;
mod held;
mod http;
pub mod relay;
mod state;
pub mod via_agent;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;
use keyward_proto::RelayBatch;

use crate::api::ApiClient as Server;
use devices::{Endpoint, Reported, Sources, Watcher};
use held::Held;
use keyward_proto::agent::{
    BusyBatch, DeviceReport, PairRequest, PairingStarted, PollAnswer, PollRequest, ReportAnswer,
    WorkAnswer, WorkRequest,
};
use keyward_transport::pcsc::Disposition;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Keyward server URL.
    #[arg(long, env = "KEYWARD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Where the agent keeps its credential (default
    /// `$XDG_CONFIG_HOME/keyward/agent`, else `~/.config/keyward/agent`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The name shown to the approver (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// A virtual device's HID socket (`keyward vcard --hid-socket`); repeatable.
    #[arg(long = "hid-socket", value_name = "PATH")]
    pub hid_socket: Vec<PathBuf>,
    /// Do not look at PC/SC readers.
    #[arg(long)]
    pub no_pcsc: bool,
    /// Do not look at hidraw devices.
    #[arg(long)]
    pub no_hidraw: bool,
    /// An in-process virtual device `KIND:SERIAL` (`yubikey5` or `c4000`),
    /// for tests and demonstrations; repeatable. `:remove-after=N` removes
    /// it after N relayed commands (a test of device removal mid-batch).
    #[arg(long = "virtual", value_name = "KIND:SERIAL")]
    pub virtual_devices: Vec<String>,
    /// Control sockets for the `--virtual` devices: `DIR/SERIAL.sock`
    /// (commands as `keyward vcard --control`: remove, insert, touch, …).
    #[arg(long, value_name = "DIR")]
    pub virtual_control: Option<PathBuf>,
}

/// How often the devices are looked at.
const SCAN_EVERY: Duration = Duration::from_millis(1000);

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "workstation".into())
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(state::default_state_dir);
    let ca_dir = state_dir.join("virtual-ca");
    let mut virtual_devices = Vec::new();
    for spec in &args.virtual_devices {
        virtual_devices.push(devices::parse_virtual(spec, &ca_dir)?);
    }
    if let Some(dir) = &args.virtual_control {
        std::fs::create_dir_all(dir)?;
        for v in &virtual_devices {
            let serial = v.handle.with_card(|c| c.config().serial);
            keyward_vcard::control::serve(v.handle.clone(), &dir.join(format!("{serial}.sock")))?;
        }
    }
    let sources = Sources {
        pcsc: !args.no_pcsc,
        hidraw: !args.no_hidraw,
        hid_sockets: args.hid_socket.clone(),
        virtual_devices,
    };
    let path = state::credential_path(&state_dir, &args.server);
    let name = args.name.clone().unwrap_or_else(host_name);
    let mut server = http::client(&args.server, None)?;
    let credential = match state::load(&path)? {
        Some(c) if c.server.trim_end_matches('/') == server.base() => {
            server.set_credential(c.credential.clone());
            match server.try_get::<serde::de::IgnoredAny>("/agents/me")? {
                Ok(_) => Some(c),
                Err(e) if e.status == 401 => {
                    eprintln!(
                        "the server does not know this agent's credential any more: pairing again"
                    );
                    state::forget(&path);
                    None
                }
                Err(e) if e.status == 403 => {
                    eprintln!("this agent was revoked ({e}): pairing again");
                    state::forget(&path);
                    None
                }
                Err(e) => bail!("checking the agent's credential: {e}"),
            }
        }
        _ => None,
    };
    let credential = match credential {
        Some(c) => c,
        None => {
            let mut unpaired = http::client(&args.server, None)?;
            let c = pair(&mut unpaired, &name)?;
            state::save(&path, &c)?;
            eprintln!("paired; credential kept in {}", path.display());
            c
        }
    };
    server.set_credential(credential.credential.clone());
    eprintln!(
        "agent {} relaying for {} (no listening port; Ctrl-C to stop)",
        credential.agent_id,
        server.base()
    );
    let stop = Arc::new(AtomicBool::new(false));
    match serve(server, sources, stop) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            if e.to_string().contains("agent_revoked") {
                state::forget(&path);
            }
            Err(e)
        }
    }
}

/// The device-code flow: ask, print the code, poll until approved.
fn pair(server: &mut Server, name: &str) -> anyhow::Result<state::Credential> {
    let started: PairingStarted = server
        .try_post(
            "/agents/pair",
            &PairRequest {
                name: name.to_string(),
            },
        )?
        .map_err(|e| anyhow!("the server refused to pair: {e}"))?;
    let interval = Duration::from_secs(started.interval_seconds.max(1));
    let minutes = started.expires_in_seconds / 60;
    let code = started.code;
    println!("pairing code: {code}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "approve it within {minutes} minutes in the portal (Agents), or: keyward admin agent approve {code}"
    );
    let poll = PollRequest {
        poll_secret: started.poll_secret,
    };
    loop {
        std::thread::sleep(interval);
        let answer = match server.try_post::<PollAnswer, _>("/agents/pair/poll", &poll) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e:#}; trying again");
                continue;
            }
        };
        match answer {
            // 202: not approved yet.
            Ok(p) if p.status == "pending" => continue,
            Ok(paired) => {
                return Ok(state::Credential {
                    server: server.base().to_string(),
                    agent_id: paired.agent_id,
                    credential: paired
                        .credential
                        .ok_or_else(|| anyhow!("the server answered no credential"))?,
                });
            }
            Err(e) => bail!("pairing failed: {e}"),
        }
    }
}

/// What the threads of one agent share.
struct Shared {
    /// Serial → how to reach the device.
    devices: Mutex<HashMap<String, Endpoint>>,
    /// Session → the batch (seq) being relayed now.
    in_hand: Mutex<HashMap<String, u64>>,
    /// Sessions being relayed (the watcher holds still meanwhile).
    busy: AtomicUsize,
    /// Session → the device it holds, from its first batch to its end.
    holds: Mutex<HashMap<String, Hold>>,
    stop: Arc<AtomicBool>,
    /// Set by the watcher when the server refuses the agent.
    fatal: Mutex<Option<String>>,
}

/// A session's hold on its device: which device, what the watcher must not
/// touch, and the connection (locked only while a batch runs).
#[derive(Clone)]
struct Hold {
    serial: String,
    locators: Vec<String>,
    held: Arc<Mutex<Held>>,
}

impl Shared {
    /// The hold of session `id` on `serial`: the one it has, or a new
    /// connection. Another session's hold on the same device is ended first
    /// (the server starts a session on a device only once the last one on it
    /// is over).
    fn hold(&self, id: &str, serial: &str) -> Result<Hold, keyward_transport::TransportError> {
        let stale: Vec<String> = {
            let holds = self.holds.lock().unwrap();
            if let Some(h) = holds.get(id).filter(|h| h.serial == serial) {
                return Ok(h.clone());
            }
            holds
                .iter()
                .filter(|(other, h)| h.serial == serial || other.as_str() == id)
                .map(|(other, _)| other.clone())
                .collect()
        };
        for other in stale {
            self.release(&other, Disposition::Reset);
        }
        let endpoint = self.devices.lock().unwrap().get(serial).cloned();
        let endpoint = endpoint.ok_or(keyward_transport::TransportError::DeviceRemoved)?;
        let held = Held::open(&endpoint)?;
        let hold = Hold {
            serial: serial.to_string(),
            locators: held.locators(),
            held: Arc::new(Mutex::new(held)),
        };
        self.holds
            .lock()
            .unwrap()
            .insert(id.to_string(), hold.clone());
        Ok(hold)
    }

    /// Ends session `id`'s hold (if any) with `disposition`.
    fn release(&self, id: &str, disposition: Disposition) {
        let Some(hold) = self.holds.lock().unwrap().remove(id) else {
            return;
        };
        eprintln!(
            "session {id}: device {} released ({})",
            hold.serial,
            match disposition {
                Disposition::Reset => "reset",
                Disposition::Leave => "left as it is",
            }
        );
        // The last reference once no batch runs on it.
        match Arc::try_unwrap(hold.held) {
            Ok(held) => held
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .end(disposition),
            Err(_) => tracing::debug!(session = %id, "hold released while a batch runs"),
        }
    }

    /// Serials held by a session, and the readers and HID paths behind them.
    fn held(&self) -> (std::collections::BTreeSet<String>, Vec<String>) {
        let holds = self.holds.lock().unwrap();
        (
            holds.values().map(|h| h.serial.clone()).collect(),
            holds.values().flat_map(|h| h.locators.clone()).collect(),
        )
    }
}

/// For `keyward demo`: an agent already paired (its credential given) with
/// in-process virtual devices only, on its own threads until `stop`.
pub fn run_paired(
    server_url: &str,
    credential: String,
    virtual_devices: Vec<devices::VirtualDevice>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let sources = Sources {
        virtual_devices,
        ..Default::default()
    };
    let url = server_url.to_string();
    Ok(std::thread::Builder::new()
        .name("demo-agent".into())
        .spawn(move || {
            // The blocking HTTP client is made on this thread, outside the
            // caller's async runtime.
            let served = http::client(&url, Some(&credential))
                .and_then(|server| serve(server, sources, stop));
            if let Err(e) = served {
                eprintln!("demo agent stopped: {e:#}");
            }
        })?)
}

/// Reports devices (own thread) and relays work (this thread) until `stop`
/// or until the server refuses the agent.
fn serve(server: Server, sources: Sources, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let server = Arc::new(server);
    let shared = Arc::new(Shared {
        devices: Mutex::new(HashMap::new()),
        in_hand: Mutex::new(HashMap::new()),
        busy: AtomicUsize::new(0),
        holds: Mutex::new(HashMap::new()),
        stop,
        fatal: Mutex::new(None),
    });
    // The first report before the first poll: the server delivers only
    // batches of devices the agent reports.
    let mut watcher = Watcher::new(sources);
    let mut last_report: Option<Vec<Reported>> = None;
    report_once(&server, &shared, &mut watcher, &mut last_report)?;
    {
        let (server, shared) = (server.clone(), shared.clone());
        std::thread::Builder::new()
            .name("agent-devices".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SCAN_EVERY);
                    if shared.busy.load(Ordering::SeqCst) > 0 {
                        // Never probe a device in the middle of a batch; a
                        // removal is reported once its result is posted.
                        continue;
                    }
                    if let Err(e) = report_once(&server, &shared, &mut watcher, &mut last_report) {
                        let text = format!("{e:#}");
                        if text.contains("agent_revoked") || text.contains("agent_not_paired") {
                            *shared.fatal.lock().unwrap() = Some(text);
                            shared.stop.store(true, Ordering::SeqCst);
                            return;
                        }
                        eprintln!("reporting devices: {text}");
                    }
                }
            })?;
    }
    let mut unreachable_since: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let request = WorkRequest {
            busy: shared
                .in_hand
                .lock()
                .unwrap()
                .iter()
                .map(|(s, seq)| BusyBatch {
                    session_id: s.clone(),
                    seq: *seq,
                })
                .collect(),
            held: shared.holds.lock().unwrap().keys().cloned().collect(),
            wait_seconds: Some(25),
        };
        let answer = server.try_post::<WorkAnswer, _>("/agents/me/work", &request);
        let work = match answer {
            Ok(a) => {
                if unreachable_since.take().is_some() {
                    eprintln!("server reachable again");
                }
                a
            }
            Err(e) => {
                if unreachable_since.is_none() {
                    eprintln!("{e:#}; retrying");
                    unreachable_since = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        let work = match work {
            Ok(w) => w,
            Err(e) if matches!(e.status, 401 | 403) => {
                bail!("the server refuses this agent: {e}")
            }
            Err(e) => {
                eprintln!("asking for work: {e}");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        // Sessions that ended without this agent (cancelled, abandoned):
        // their security state must not outlive them.
        for id in &work.released {
            if !shared.in_hand.lock().unwrap().contains_key(id) {
                shared.release(id, Disposition::Reset);
            }
        }
        for item in work.items {
            let (serial, batch) = (item.serial, item.batch);
            {
                let mut hand = shared.in_hand.lock().unwrap();
                if hand.contains_key(&batch.session_id) {
                    continue;
                }
                hand.insert(batch.session_id.clone(), batch.seq);
            }
            shared.busy.fetch_add(1, Ordering::SeqCst);
            let (server, shared) = (server.clone(), shared.clone());
            std::thread::spawn(move || {
                let id = batch.session_id.clone();
                relay_session(&server, &shared, &serial, batch);
                shared.in_hand.lock().unwrap().remove(&id);
                shared.busy.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
    if let Some(text) = shared.fatal.lock().unwrap().take() {
        bail!("{text}");
    }
    Ok(())
}

/// Looks at the devices and reports them if the set changed.
fn report_once(
    server: &Server,
    shared: &Shared,
    watcher: &mut Watcher,
    last: &mut Option<Vec<Reported>>,
) -> anyhow::Result<()> {
    let (held_serials, hold_off) = shared.held();
    let seen = watcher.scan(&held_serials, &hold_off);
    let now: Vec<Reported> = seen.values().map(|(r, _)| r.clone()).collect();
    *shared.devices.lock().unwrap() = seen
        .into_iter()
        .map(|(serial, (_, endpoint))| (serial, endpoint))
        .collect();
    if last.as_ref() == Some(&now) {
        return Ok(());
    }
    let answer: ReportAnswer = server
        .try_put(
            "/agents/me/devices",
            &DeviceReport {
                devices: now.clone(),
            },
        )?
        .map_err(|e| anyhow!("reporting the devices: {e}"))?;
    for serial in &answer.arrived {
        let r = now.iter().find(|r| &r.serial == serial);
        eprintln!(
            "device arrived: {} {serial}",
            r.map(|r| r.device_type.as_str()).unwrap_or("")
        );
    }
    for serial in &answer.removed {
        eprintln!("device removed: {serial}");
    }
    *last = Some(now);
    Ok(())
}

/// Relays a session's command batches until one needs the person (a prompt
/// batch) or the session ends; the server answers each result with the next
/// batch. The device is held on one connection across batches and ended
/// with a reset only when the session is over.
fn relay_session(server: &Server, shared: &Shared, serial: &str, mut batch: RelayBatch) {
    let id = batch.session_id.clone();
    while batch.state.is_running() && !batch.commands.is_empty() {
        shared.in_hand.lock().unwrap().insert(id.clone(), batch.seq);
        let started = Instant::now();
        let run = match shared.hold(&id, serial) {
            Ok(hold) => {
                let mut held = hold.held.lock().unwrap_or_else(|e| e.into_inner());
                let run = held.run(&batch);
                // Left or reset, seen on its card or its HID side.
                let lost = held.lost()
                    || run
                        .result
                        .transport_error
                        .as_deref()
                        .is_some_and(keyward_transport::TransportError::code_means_device_gone);
                drop(held);
                if lost {
                    // The card left (or was reset): the connection is over.
                    shared.release(&id, Disposition::Leave);
                }
                run
            }
            Err(e) => relay::failed(&batch, &e),
        };
        eprintln!(
            "session {id}: batch {} ({} of {} commands, step {}){}",
            batch.seq,
            run.result.responses.len(),
            batch.commands.len(),
            batch.step,
            run.result
                .transport_error
                .as_deref()
                .map(|e| format!(", stopped: {e}"))
                .unwrap_or_default()
        );
        let mut attempt = 0;
        let answer = loop {
            // Resending the identical result is safe (idempotent).
            match server.relay(&run.result) {
                Ok(a) => break Some(a),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("session {id}: {e:#}; sending the result again");
                    std::thread::sleep(Duration::from_millis(500 * attempt));
                }
                Err(e) => {
                    eprintln!("session {id}: giving up: {e:#}");
                    break None;
                }
            }
        };
        // The hold stays: the server tells in the long-poll's answer when
        // the session is over.
        let Some(answer) = answer else { return };
        match answer {
            Ok(b) => batch = b,
            Err(e) => {
                eprintln!(
                    "session {id}: the server refused the result of batch {}: {e}",
                    batch.seq
                );
                return;
            }
        }
        tracing::debug!(session = %id, ms = started.elapsed().as_millis() as u64, "batch relayed");
    }
    if !batch.state.is_running() {
        // Issued, assigned, failed or cancelled: no verified PIN or
        // authenticated management key may outlive the session.
        shared.release(&id, Disposition::Reset);
    } else if batch.prompts.iter().any(|p| p.kind == "reinsert_device") {
        if let Some(hold) = shared.holds.lock().unwrap().get(&id) {
            hold.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expect_reinsert();
        }
    }
    eprintln!("session {id}: {} (step {})", batch.state, batch.step);
}
