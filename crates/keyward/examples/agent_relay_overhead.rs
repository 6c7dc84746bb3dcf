//! Relay overhead per batch through a workstation agent, on loopback, with
//! the device's time excluded (issue 4, BENCHMARKS.md "Relay overhead (issue
//! 4)"). Not run by `.ci/run`:
//!
//! ```text
//! cargo run --release -p keyward --example agent_relay_overhead [SESSIONS]
//! flock /tmp/keyward-pcsc.lock \
//!   cargo run --release -p keyward --example agent_relay_overhead [SESSIONS] --pcsc [PORT]
//! ```
//!
//! With `--pcsc` each session's virtual YubiKey is attached to pcscd's vpcd
//! reader (PORT, default 35963; needs `.ci/pcscd start`) and the agent's
//! batches go over real PC/SC as `keyward agent` sends them
//! (`src/agent/held.rs`): one shared connection held for the session, each
//! batch inside one PC/SC transaction, a reset at the end. The transaction's
//! begin and end are then measured apart (`pcsc transaction`), and the
//! device's time includes pcscd and vpcd.
//!
//! It starts the server in-process on 127.0.0.1 (SQLite in a temporary
//! folder), records an agent paired to the demo operator, and plays that
//! agent with the agent's own batch runner (`src/agent/relay.rs`) on
//! in-process virtual YubiKeys: long-poll for work, run the batch, post the
//! result, get the next batch. Per batch it measures
//!
//! * `agent`: the agent's own work outside the device (decode the batch,
//!   hex, dispatch, encode the result): cycle minus device minus HTTP;
//! * `http`: the loopback HTTP round trip of an agent call that does no
//!   issuance work (`GET /agents/me`: authentication only), i.e. the
//!   transport part of each relay; and the work long-poll answered at once;
//! * `relay`: the whole `POST /issuance/{id}/relay` round trip, which also
//!   holds the server's issuance step (engine, certificate signing in batch
//!   2, sealing, the audited store transaction); every other session is
//!   relayed with an API token instead, to show what the agent's checks
//!   (bound, device reported, command batch) add;
//!
//! and prints median and 95th percentile of each, in milliseconds.

#[path = "../src/agent/relay.rs"]
#[allow(dead_code)]
mod relay;

use std::time::{Duration, Instant};

use keyward_proto::RelayBatch;
use keyward_transport::discover::{discover, DiscoveryOptions};
use keyward_transport::in_process::InProcessCard;
use keyward_transport::pcsc::{Disposition, Pcsc, PcscTransport};
use keyward_vcard::{ProfileKind, VcardConfig, VcardHandle, VirtualCard};
use serde_json::{json, Value};

const TOKEN: &str = "kw_bench_relay_overhead_token_000000000000";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Attaches `card` to vpcd on `port` and connects to it (shared) as the
/// agent does for a session.
fn attach_to_pcscd(card: &VcardHandle, serial: u32, port: u16) -> anyhow::Result<PcscTransport> {
    let (tx, rx) = std::sync::mpsc::channel();
    keyward_vcard::vpcd::run(card.clone(), &format!("127.0.0.1:{port}"), move || {
        let _ = tx.send(());
    })?;
    rx.recv_timeout(Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let reader = loop {
        let found = discover(&DiscoveryOptions {
            hidraw: false,
            ..Default::default()
        })
        .devices
        .into_iter()
        .find(|d| d.identity.serial == Some(serial))
        .and_then(|d| d.reader);
        if let Some(r) = found {
            break r;
        }
        anyhow::ensure!(Instant::now() < deadline, "card {serial} not in a reader");
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Pcsc::establish()?.connect(&reader)?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sessions: u32 = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let pcsc_port: Option<u16> = match args.iter().position(|a| a == "--pcsc") {
        Some(i) => Some(
            args.get(i + 1)
                .map(|p| p.parse())
                .transpose()?
                .unwrap_or(35963),
        ),
        None => None,
    };
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let config = keyward_server::config::Config::load(
        None,
        keyward_server::config::Overrides {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".parse()?),
            ..Default::default()
        },
    )?;
    let (url, credential) = rt.block_on(async {
        let server = keyward_server::Server::start(
            config,
            keyward_server::StartOptions {
                bootstrap_token: Some(TOKEN.into()),
                allow_weak_bootstrap_token: false,
            },
        )
        .await?;
        keyward_server::demo::seed(&server.state).await?;
        let credential = keyward_server::demo::demo_agent_credential(
            &server.state,
            "operator",
            "bench workstation",
            &dir.path().join("agent.credential"),
        )
        .await?;
        let url = server.url.clone();
        // Keep the server running on the runtime's threads.
        std::mem::forget(server);
        anyhow::Ok((url, credential))
    })?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let call =
        |bearer: &str, method: reqwest::Method, path: &str, body: Value| -> anyhow::Result<Value> {
            let r = http
                .request(method, format!("{url}/api/v1{path}"))
                .bearer_auth(bearer)
                .json(&body)
                .send()?;
            let status = r.status();
            let v: Value = r.json()?;
            anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
            Ok(v)
        };
    let ca = dir.path().join("ca");
    let (mut agent_ms, mut http_ms, mut relay_ms, mut device_ms) = (vec![], vec![], vec![], vec![]);
    let (mut auth_ms, mut relay_token_ms, mut tx_ms) = (vec![], vec![], vec![]);
    for i in 0..sessions {
        let serial = 40_000_000 + i;
        call(
            TOKEN,
            reqwest::Method::POST,
            "/devices",
            json!({ "device_type": "yubikey5", "serial": serial.to_string(), "firmware_version": "5.7.1" }),
        )?;
        let card = VcardHandle::new(VirtualCard::new(
            VcardConfig::new(ProfileKind::Yubikey5)
                .with_serial(serial)
                .with_ca_dir(&ca),
        )?);
        call(
            &credential,
            reqwest::Method::PUT,
            "/agents/me/devices",
            json!({ "devices": [{ "serial": serial.to_string(), "device_type": "yubikey5", "firmware": "5.7.1", "applets": ["piv"], "transports": ["in_process"] }] }),
        )?;
        call(
            TOKEN,
            reqwest::Method::POST,
            "/issuance",
            json!({ "user": "alice", "policy": "PIV Standard", "serial": serial.to_string(), "pin": "735194", "via": "agent" }),
        )?;
        // The transport alone: an agent call the server answers at once.
        let t = Instant::now();
        let work = call(
            &credential,
            reqwest::Method::POST,
            "/agents/me/work",
            json!({ "wait_seconds": 0 }),
        )?;
        http_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut text = serde_json::to_string(&work["items"][0]["batch"])?;
        let mut in_process = relay::CardIo::new(InProcessCard::new(card.clone(), "bench"));
        let mut held = match pcsc_port {
            Some(port) => Some(attach_to_pcscd(&card, serial, port)?),
            None => None,
        };
        // Every other session is relayed with the operator's API token
        // instead: the difference is what the agent checks cost the server.
        let as_agent = i % 2 == 0;
        let bearer = if as_agent { credential.as_str() } else { TOKEN };
        loop {
            let cycle = Instant::now();
            let batch: RelayBatch = serde_json::from_str(&text)?;
            if !batch.state.is_running() {
                anyhow::ensure!(
                    batch.state == keyward_domain::SessionStatus::Issued,
                    "session ended {}",
                    batch.state
                );
                break;
            }
            let started = Instant::now();
            let run = match held.as_mut() {
                // As `keyward agent` runs a batch on a held PC/SC card.
                Some(pcsc) => {
                    let mut inner = 0.0;
                    let run = pcsc.with_transaction(|t| {
                        let t0 = Instant::now();
                        let run = relay::run_batch(&mut relay::CardIo::new(t), &batch);
                        inner = t0.elapsed().as_secs_f64() * 1e3;
                        run
                    })?;
                    tx_ms.push(started.elapsed().as_secs_f64() * 1e3 - inner);
                    run
                }
                None => relay::run_batch(&mut in_process, &batch),
            };
            let body = serde_json::to_vec(&run.result)?;
            let posted = Instant::now();
            let r = http
                .post(format!("{url}/api/v1/issuance/{}/relay", batch.session_id))
                .bearer_auth(bearer)
                .header("content-type", "application/json")
                .body(body)
                .send()?;
            anyhow::ensure!(r.status().is_success(), "relay: {}", r.status());
            text = r.text()?;
            let round_trip = posted.elapsed().as_secs_f64() * 1e3;
            let total = cycle.elapsed().as_secs_f64() * 1e3;
            if as_agent {
                relay_ms.push(round_trip);
            } else {
                relay_token_ms.push(round_trip);
            }
            device_ms.push(run.device_ms);
            let tx = if held.is_some() {
                *tx_ms.last().expect("pushed")
            } else {
                0.0
            };
            agent_ms.push(total - round_trip - run.device_ms - tx);
            // HTTP on loopback plus the agent's authentication, nothing else.
            let t = Instant::now();
            call(&credential, reqwest::Method::GET, "/agents/me", Value::Null)?;
            auth_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(pcsc) = held.take() {
            // The session is over: the agent ends its hold with a reset.
            pcsc.end(Disposition::Reset);
            card.remove();
        }
    }
    let batches = relay_ms.len() + relay_token_ms.len();
    let device = if pcsc_port.is_some() {
        "device (virtual card over pcscd + vpcd, excluded)"
    } else {
        "device (in-process virtual card, excluded)"
    };
    println!(
        "{sessions} issuances, {batches} batches through the agent endpoints on loopback{}",
        if pcsc_port.is_some() {
            ", the device over PC/SC"
        } else {
            ""
        }
    );
    for (name, v) in [
        ("agent work outside the device", &mut agent_ms),
        ("HTTP round trip + agent authentication", &mut auth_ms),
        ("work long-poll answered at once", &mut http_ms),
        (
            "relay POST by the agent (incl. issuance step)",
            &mut relay_ms,
        ),
        (
            "relay POST by an API token (same work)",
            &mut relay_token_ms,
        ),
        (device, &mut device_ms),
    ] {
        let (p50, p95) = (percentile(v, 0.5), percentile(v, 0.95));
        println!("  {name:<48} median {p50:7.3} ms   p95 {p95:7.3} ms");
    }
    let mut overhead = percentile(&mut agent_ms, 0.5) + percentile(&mut auth_ms, 0.5);
    if !tx_ms.is_empty() {
        let (p50, p95) = (percentile(&mut tx_ms, 0.5), percentile(&mut tx_ms, 0.95));
        println!(
            "  {:<48} median {p50:7.3} ms   p95 {p95:7.3} ms",
            "pcsc transaction begin + end per batch"
        );
        overhead += p50;
    }
    println!(
        "  relay overhead per batch (median agent work + median HTTP round trip with authentication{}): {overhead:.3} ms",
        if tx_ms.is_empty() { "" } else { " + median PC/SC transaction" }
    );
    let checks = percentile(&mut relay_ms, 0.5) - percentile(&mut relay_token_ms, 0.5);
    println!(
        "  the agent checks on the relay endpoint (agent minus token, medians): {checks:.3} ms"
    );
    Ok(())
}
