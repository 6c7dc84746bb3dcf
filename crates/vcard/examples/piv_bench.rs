//! Benchmark of the virtual card's PIV side (issue 3): the per-APDU
//! processing overhead in-process (GET DATA of a small object), and the
//! card's own time for key generation and signing. Not a test; run once:
//! `cargo run --release -p keyward-vcard --example piv_bench`.

use keyward_card::apdu::ResponseApdu;
use keyward_card::piv::{self, alg, dyn_auth, key_ref, object};
use keyward_vcard::{ManufacturerCa, ProfileKind, VcardConfig, VirtualCard};
use std::time::{Duration, Instant};

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p90 = samples[(samples.len() * 9 / 10).min(samples.len() - 1)];
    (median, p90)
}

fn time<F: FnMut()>(runs: usize, warmup: usize, mut f: F) -> (Duration, Duration) {
    for _ in 0..warmup {
        f();
    }
    let samples = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    stats(samples)
}

fn ok(card: &mut VirtualCard, apdu: &[u8]) -> ResponseApdu {
    let r = ResponseApdu::parse(&card.transmit(apdu)).unwrap();
    assert!(r.is_success() || r.has_more(), "SW {:04X}", r.sw);
    r
}

fn row(what: &str, runs: usize, (median, p90): (Duration, Duration)) {
    let fmt = |d: Duration| {
        if d < Duration::from_millis(1) {
            format!("{:.2} µs", d.as_secs_f64() * 1e6)
        } else {
            format!("{:.1} ms", d.as_secs_f64() * 1e3)
        }
    };
    println!("| {what} | {runs} | {} | {} |", fmt(median), fmt(p90));
}

fn main() {
    let dir = std::env::temp_dir().join(format!("keyward-piv-bench-{}", std::process::id()));
    let ca = ManufacturerCa::load_or_create(&dir).unwrap();
    let config = VcardConfig::new(ProfileKind::Yubikey5).with_ca_dir(&dir);
    let mut card = VirtualCard::with_ca(config, &ca).unwrap();
    card.power_on();

    println!("| Operation (in-process) | runs | median | p90 |");
    println!("|---|---|---|---|");

    let get_discovery = piv::get_data(object::DISCOVERY).to_bytes();
    row(
        "GET DATA discovery object (20 bytes): APDU parse, dispatch, TLV, response",
        100_000,
        time(100_000, 10_000, || {
            ok(&mut card, &get_discovery);
        }),
    );
    let status = piv::verify(key_ref::PIN, None).unwrap().to_bytes();
    row(
        "VERIFY status query (no data)",
        100_000,
        time(100_000, 10_000, || {
            card.transmit(&status);
        }),
    );

    // Management key authentication (AES-192, mutual: two APDUs).
    let key = card.piv().state.management_key.clone();
    let authenticate = |card: &mut VirtualCard| {
        let r = ok(
            card,
            &piv::general_authenticate(key.algorithm, 0x9B, &[(dyn_auth::WITNESS, &[])]).to_bytes(),
        );
        let w = piv::parse_general_authenticate_response(&r.data, dyn_auth::WITNESS).unwrap();
        let plain = key.decrypt_block(w);
        ok(
            card,
            &piv::general_authenticate(
                key.algorithm,
                0x9B,
                &[
                    (dyn_auth::WITNESS, &plain),
                    (dyn_auth::CHALLENGE, &[1u8; 16]),
                ],
            )
            .to_bytes(),
        );
    };
    row(
        "Management key mutual authentication, AES-192 (2 APDUs)",
        10_000,
        time(10_000, 100, || authenticate(&mut card)),
    );
    authenticate(&mut card);
    ok(
        &mut card,
        &piv::verify(key_ref::PIN, Some(b"123456"))
            .unwrap()
            .to_bytes(),
    );

    for (name, algorithm, runs, slot) in [
        ("P-256", alg::ECC_P256, 200, 0x9A),
        ("RSA 2048", alg::RSA_2048, 10, 0x9D),
        ("RSA 3072", alg::RSA_3072, 5, 0x82),
    ] {
        let generate = piv::generate(algorithm, slot, 0, 0).to_bytes();
        row(
            &format!("GENERATE {name}"),
            runs,
            time(runs, 1, || {
                let r = ok(&mut card, &generate);
                assert!(!r.data.is_empty());
            }),
        );
        let input = match alg::rsa_bytes(algorithm) {
            Some(len) => {
                let mut block = vec![0x00, 0x01];
                block.resize(len - 33, 0xFF);
                block.push(0);
                block.extend_from_slice(&[0x42; 32]);
                block
            }
            None => vec![0x42; 32],
        };
        let sign = piv::sign(algorithm, slot, &input).to_bytes();
        let runs = if alg::rsa_bytes(algorithm).is_some() {
            100
        } else {
            1000
        };
        row(
            &format!("GENERAL AUTHENTICATE sign, {name}"),
            runs,
            time(runs, 5, || {
                ok(&mut card, &sign);
            }),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
