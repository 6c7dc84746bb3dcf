//! APDU throughput through pcscd + vpcd: Keyward's PC/SC transport versus
//! the same APDUs sent by OpenSC's `opensc-tool -s` (one process, every
//! APDU on its command line), side by side. Not part of the test suite.
//!
//! ```text
//! cargo run --release -p keyward-transport --features vcard --example apdu_throughput -- [N] [PORT] [--quickack]
//! ```
//! N APDUs (default 5000); PORT is the vpcd slot (default 35964, reader
//! "Virtual PCD 00 01"). Needs pcscd with vpcd running (`.ci/pcscd start`)
//! and opensc-tool; take the PC/SC lock (/tmp/keyward-pcsc.lock) so no
//! test uses the slot meanwhile. The virtual card runs in this process,
//! attached to vpcd, so the card's own time is the same for both clients.
//! `--quickack` attaches it with this example's vpcd client, which ACKs at
//! once (see [`quickack_vpcd_client`]) instead of keyward_vcard's.

use keyward_transport::apdu::ApduTransport;
use keyward_transport::discover::{discover, DiscoveryOptions};
use keyward_transport::pcsc::Pcsc;
use keyward_vcard::{ProfileKind, VcardConfig, VcardHandle, VirtualCard};
use std::process::Command;
use std::time::{Duration, Instant};

/// GET DATA of the PIV discovery object: a short command, a 20-byte answer.
const APDU: &[u8] = &[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00];
const SERIAL: u32 = 31_000_001;
/// Each measurement is the median of this many rounds.
const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn opensc(reader_index: usize, n: usize) -> Duration {
    let hex: String = APDU
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = Command::new("opensc-tool");
    cmd.args(["-r", &reader_index.to_string(), "-c", "default"]);
    for _ in 0..n {
        cmd.args(["-s", &hex]);
    }
    let start = Instant::now();
    let out = cmd.output().expect("run opensc-tool");
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "opensc-tool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered = text.matches("SW1=0x90, SW2=0x00").count();
    assert_eq!(answered, n, "opensc-tool answers: {text}");
    took
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5000);
    let port: u16 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(35964);
    let quickack = args.iter().any(|a| a == "--quickack");

    let ca = tempfile_dir();
    let card = VirtualCard::new(
        VcardConfig::new(ProfileKind::C4000)
            .with_serial(SERIAL)
            .with_ca_dir(&ca),
    )
    .expect("virtual card");
    let handle = VcardHandle::new(card);
    let addr = format!("127.0.0.1:{port}");
    if quickack {
        std::thread::spawn(move || quickack_vpcd_client(handle, &addr));
        std::thread::sleep(Duration::from_secs(2));
    } else {
        let (tx, rx) = std::sync::mpsc::channel();
        keyward_vcard::vpcd::run(handle.clone(), &addr, move || {
            let _ = tx.send(());
        })
        .expect("attach to vpcd");
        rx.recv().unwrap();
    }

    let reader = discover(&DiscoveryOptions {
        hidraw: false,
        ..Default::default()
    })
    .devices
    .into_iter()
    .find(|d| d.identity.serial == Some(SERIAL))
    .and_then(|d| d.reader)
    .expect("the virtual card in a reader");
    let pcsc = Pcsc::establish().unwrap();
    let reader_index = pcsc
        .readers()
        .unwrap()
        .iter()
        .position(|r| r.name == reader)
        .unwrap();
    let mut t = pcsc.connect(&reader).unwrap();
    // Select PIV once for both clients (opensc-tool's -c default selects nothing).
    let select = keyward_transport::card::piv::select_piv().to_bytes();
    t.transmit_raw(&select).unwrap();

    // Warm up.
    for _ in 0..50 {
        t.transmit_raw(APDU).unwrap();
    }
    // Rounds alternate between the two clients so that the load of the
    // shared machine falls on both alike; each figure is a median.
    // opensc-tool runs all N APDUs in one process; its start-up (context,
    // connect) is measured with one APDU in the same round and taken off.
    let mut keyward_rounds = Vec::new();
    let mut opensc_rounds = Vec::new();
    let mut startups = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..n {
            let r = t.transmit_raw(APDU).unwrap();
            assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        }
        keyward_rounds.push(start.elapsed());
        let one = opensc(reader_index, 1);
        let all = opensc(reader_index, n);
        startups.push(one);
        opensc_rounds.push(all.saturating_sub(one));
    }
    drop(t);
    let keyward = median(keyward_rounds);
    let opensc_apdus = median(opensc_rounds);
    let one = median(startups);

    let per = |d: Duration, k: usize| d.as_secs_f64() * 1e6 / k as f64;
    let kw_us = per(keyward, n);
    let os_us = per(opensc_apdus, n - 1);
    println!(
        "vpcd client: {}",
        if quickack {
            "this example's, with TCP_QUICKACK"
        } else {
            "keyward_vcard::vpcd (as `keyward vcard`)"
        }
    );
    println!("APDUs: {n} x GET DATA discovery object (9-byte command, 22-byte response), reader {reader:?}");
    println!("| client | total | per APDU | APDUs/s |");
    println!("|---|---|---|---|");
    println!(
        "| Keyward PcscTransport | {:.1} ms | {kw_us:.1} µs | {:.0} |",
        keyward.as_secs_f64() * 1e3,
        1e6 / kw_us
    );
    println!(
        "| opensc-tool -s (start-up of {:.1} ms taken off) | {:.1} ms | {os_us:.1} µs | {:.0} |",
        one.as_secs_f64() * 1e3,
        opensc_apdus.as_secs_f64() * 1e3,
        1e6 / os_us
    );
    println!(
        "ratio opensc-tool / Keyward time per APDU: {:.2}",
        os_us / kw_us
    );
    let _ = std::fs::remove_dir_all(&ca);
}

/// A vpcd client like keyward_vcard::vpcd's, that also ACKs every segment
/// at once (TCP_QUICKACK). vpcd writes a command's length and its bytes
/// separately without TCP_NODELAY, so its second write waits for the
/// card's ACK of the first: with Linux's delayed ACK that is ~40 ms per APDU.
fn quickack_vpcd_client(handle: VcardHandle, addr: &str) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut s = std::net::TcpStream::connect(addr).expect("vpcd");
    s.set_nodelay(true).unwrap();
    let quickack = |s: &std::net::TcpStream| {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    loop {
        quickack(&s);
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut frame = vec![0u8; u16::from_be_bytes(len) as usize];
        quickack(&s);
        if s.read_exact(&mut frame).is_err() {
            return;
        }
        if let Some(reply) = keyward_vcard::vpcd::answer_frame(&handle, &frame) {
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keyward-apdu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
