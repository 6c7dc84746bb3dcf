//! Relay overhead per batch through a workstation agent, on loopback, with
//! the device's time excluded (issue 4, BENCHMARKS.md "Relay overhead (issue
//! 4)"). Not run by `.ci/run`:
//!
//! ```text
//! cargo run --release -p keyward --example agent_relay_overhead [SESSIONS]
//! ```
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

use keyward_client::in_process::InProcessCard;
use keyward_proto::RelayBatch;
use keyward_vcard::{ProfileKind, VcardConfig, VcardHandle, VirtualCard};
use serde_json::{json, Value};

const TOKEN: &str = "kw_bench_relay_overhead_token_000000000000";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let sessions: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
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
    let (mut auth_ms, mut relay_token_ms) = (vec![], vec![]);
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
        let mut io = relay::CardIo::new(InProcessCard::new(card.clone(), "bench"));
        // Every other session is relayed with the operator's API token
        // instead: the difference is what the agent checks cost the server.
        let as_agent = i % 2 == 0;
        let bearer = if as_agent { credential.as_str() } else { TOKEN };
        loop {
            let cycle = Instant::now();
            let batch: RelayBatch = serde_json::from_str(&text)?;
            if batch.state != "running" {
                anyhow::ensure!(batch.state == "issued", "session ended {}", batch.state);
                break;
            }
            let run = relay::run_batch(&mut io, &batch);
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
            agent_ms.push(total - round_trip - run.device_ms);
            // HTTP on loopback plus the agent's authentication, nothing else.
            let t = Instant::now();
            call(&credential, reqwest::Method::GET, "/agents/me", Value::Null)?;
            auth_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let batches = relay_ms.len() + relay_token_ms.len();
    println!("{sessions} issuances, {batches} batches through the agent endpoints on loopback");
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
        ("device (in-process virtual card, excluded)", &mut device_ms),
    ] {
        let (p50, p95) = (percentile(v, 0.5), percentile(v, 0.95));
        println!("  {name:<48} median {p50:7.3} ms   p95 {p95:7.3} ms");
    }
    let overhead = percentile(&mut agent_ms, 0.5) + percentile(&mut auth_ms, 0.5);
    println!(
        "  relay overhead per batch (median agent work + median HTTP round trip with authentication): {overhead:.3} ms"
    );
    let checks = percentile(&mut relay_ms, 0.5) - percentile(&mut relay_token_ms, 0.5);
    println!(
        "  the agent checks on the relay endpoint (agent minus token, medians): {checks:.3} ms"
    );
    Ok(())
}
